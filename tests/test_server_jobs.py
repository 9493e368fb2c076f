"""condiff serve's long jobs (personalization, experiments): validation, a real run, cancellation."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from condiff.server.app import create_app
from condiff.server.state import ServerState


@pytest.fixture()
def client():
    state = ServerState(model=None, model_name="builtin", device="cpu")  # long jobs run in child processes
    yield TestClient(create_app(state), raise_server_exceptions=False)
    state.close()


def png(seed: int) -> str:
    arr = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wait(client, job_id: str, timeout: float = 240) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        st = client.get(f"/condiff/v1/jobs/{job_id}").json()
        if st["state"] in ("done", "failed", "cancelled"):
            return st
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.parametrize("patch,status,field", [
    ({"method": "hypernetwork"}, 422, "method"),
    ({"steps": 5000}, 413, "steps"),
    ({"images": []}, 422, "images"),
    ({"images": ["not base64!"]}, 422, "images.0"),
    ({"token": "../etc"}, 422, "token"),
    ({"class_noun": "a dog"}, 422, "class_noun"),
])
def test_personalize_validation(client, patch, status, field):
    body = {"method": "lora", "images": [png(0)], "class_noun": "dog", "steps": 2, **patch}
    r = client.post("/condiff/v1/personalize", json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["detail"]
    assert client.get("/condiff/v1/jobs").json() == []  # nothing was queued


def test_experiment_validation_and_result_routes(client):
    r = client.post("/condiff/v1/experiments", json={"names": ["everything"]})
    assert r.status_code == 422 and "names" in r.json()["detail"]
    assert client.get("/condiff/v1/jobs/0123/result").status_code == 404


@pytest.mark.slow
def test_personalize_lora_job_and_cancel_experiment(client):
    r = client.post("/condiff/v1/personalize", json={"method": "lora", "images": [png(0), png(1)],
                                                     "class_noun": "dog", "steps": 3})
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert r.headers["Location"] == f"/condiff/v1/jobs/{job}"
    exp = client.post("/condiff/v1/experiments", json={"names": ["sketch"], "quick": True}).json()["job"]
    assert client.get(f"/condiff/v1/jobs/{exp}").json()["position"] == 1  # queued behind the training
    st = wait(client, job)
    assert st["state"] == "done" and st["step"] == st["total"] == 3
    res = client.get(f"/condiff/v1/jobs/{job}/result").json()
    assert res["file"] == "lora.safetensors" and res["report"]["steps"] == 3 and "out" not in res["report"]
    raw = client.get(f"/condiff/v1/jobs/{job}/files/lora.safetensors").content
    assert len(raw) == res["bytes"]
    assert client.get(f"/condiff/v1/jobs/{job}/files/..%2Fimages").status_code in (404, 422)
    from safetensors.torch import load

    assert any("lora" in k for k in load(raw))
    end = time.time() + 60
    while client.get(f"/condiff/v1/jobs/{exp}").json()["state"] != "running" and time.time() < end:
        time.sleep(0.2)
    assert client.get(f"/condiff/v1/jobs/{exp}/result").status_code == 409  # not finished
    t0 = time.time()
    assert client.delete(f"/condiff/v1/jobs/{exp}").json()["cancelled"] is True
    st = wait(client, exp, 30)
    assert st["state"] == "cancelled" and time.time() - t0 < 15
    r = client.get(f"/condiff/v1/jobs/{exp}/result")
    assert r.status_code == 409 and r.json()["error"] == "Interrupted"
    assert client.get(f"/condiff/v1/jobs/{exp}/files/report.html").status_code == 422


def test_history_is_bounded_and_forgotten_jobs_are_cleaned():
    from condiff.server.jobs import JobQueue

    forgotten = []
    q = JobQueue(8, keep_finished=2, on_forget=forgotten.append)
    jobs = [q.submit("t", lambda p, i=i: i) for i in range(5)]
    for j in jobs:
        j.wait(5)
    q.submit("t", lambda p: None).wait(5)  # trimming happens as jobs finish and are submitted
    assert [j.result for j in jobs] == list(range(5))
    assert len(q.jobs()) == 2 and {j.id for j in forgotten} >= {jobs[0].id, jobs[1].id}
    assert q.get(jobs[0].id) is None and q.stats()["done"] == 6
    q.close()
