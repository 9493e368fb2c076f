"""Device-only prototype (session 9, call 2): with CONDIFF_POOLED_TOKEN=1 the MiniLM context gets one more token,
the masked mean of its token embeddings (the sentence-transformers embedding before normalisation)."""
from pathlib import Path
p = Path("condiff/nn/text_encoder.py")
s = p.read_text()
old = '''        ids, mask = self.tokenize(prompts)
        return self.encode_ids(ids, mask), mask
'''
new = '''        ids, mask = self.tokenize(prompts)
        ctx = self.encode_ids(ids, mask)
        if os.environ.get("CONDIFF_POOLED_TOKEN") == "1":
            m = mask.unsqueeze(-1).to(ctx.dtype)
            mean = (ctx * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
            ctx, mask = torch.cat([ctx, mean], 1), torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        return ctx, mask
'''
assert s.count(old) == 1
p.write_text(s.replace(old, new))
print("pooled-token prototype applied")
