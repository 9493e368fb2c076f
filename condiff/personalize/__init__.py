"""Personalization through fine-tuning (thesis §3.3, experiment 3 / §4.4).

=========================  ==================================================================
module                     what it holds
=========================  ==================================================================
``dreambooth``             DreamBooth with prior preservation, eq. 3.14–3.16; rare identifiers
``lora``                   LoRA adapters W0 + (α/r)·B·A, eq. 3.17; inject, merge, stack
``lora_formats``           LoRA files: diffusers/PEFT and kohya key layouts, read and write
``lora_training``          training a LoRA on captioned images
``captions``               captions for LoRA training (given, sidecar files, nearest concepts)
``textual_inversion``      learning new token embeddings v*, eq. 3.18
``embeddings``             embedding files (A1111 .pt/.safetensors, diffusers) and installing them
``train_common``           image set, seeded loop with checkpoints, the thesis's defaults
=========================  ==================================================================
"""

from .captions import build_captions, nearest_concepts, read_caption_files, with_trigger
from .dreambooth import (
    DreamBoothConfig,
    DreamBoothResult,
    IdentifierReport,
    generate_class_images,
    identifier_rarity,
    load_finetuned_weights,
    prior_preservation_loss,
    rare_identifiers,
    save_finetuned_weights,
    train_dreambooth,
)
from .embeddings import (
    TextualEmbedding,
    add_embedding,
    expand_prompt,
    load_embedding,
    load_embedding_into_model,
    save_embedding,
)
from .lora import TARGET_PRESETS, LoRAAdapter, LoRAConfig, LoRANetwork
from .lora_formats import apply_lora, load_lora, lora_state_dict, parse_lora_spec, save_lora
from .lora_training import LoRATrainConfig, LoRATrainResult, train_lora
from .textual_inversion import TextualInversionConfig, TextualInversionResult, train_textual_inversion
from .train_common import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_STEPS,
    DREAMBOOTH_LR,
    LORA_LR,
    TEXTUAL_INVERSION_LR,
    ImageSet,
    LoopConfig,
)

__all__ = [
    "build_captions", "nearest_concepts", "read_caption_files", "with_trigger",
    "DreamBoothConfig", "DreamBoothResult", "IdentifierReport", "generate_class_images", "identifier_rarity",
    "load_finetuned_weights", "prior_preservation_loss", "rare_identifiers", "save_finetuned_weights",
    "train_dreambooth",
    "TextualEmbedding", "add_embedding", "expand_prompt", "load_embedding", "load_embedding_into_model",
    "save_embedding",
    "TARGET_PRESETS", "LoRAAdapter", "LoRAConfig", "LoRANetwork",
    "apply_lora", "load_lora", "lora_state_dict", "parse_lora_spec", "save_lora",
    "LoRATrainConfig", "LoRATrainResult", "train_lora",
    "TextualInversionConfig", "TextualInversionResult", "train_textual_inversion",
    "DEFAULT_BATCH_SIZE", "DEFAULT_STEPS", "DREAMBOOTH_LR", "LORA_LR", "TEXTUAL_INVERSION_LR", "ImageSet",
    "LoopConfig",
]
