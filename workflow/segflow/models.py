"""Model factory: any segmentation_models_pytorch architecture and encoder, offline-safe.

``encoder_weights`` is None (random init; tests and the demo), a path to a local file
(a state_dict of the encoder, or of a whole smp model whose ``encoder.*`` keys are
taken), or a named pretrained set such as "imagenet". Named sets come from the Hugging
Face hub: segflow turns hub downloads off (HF_HUB_OFFLINE=1) unless the user set
HF_HUB_OFFLINE=0, so a missing cache is a clear error at once instead of ~23 s of
retries and an opaque failure.

``model_args`` pass through to the smp architecture (``decoder_attention_type``,
``decoder_channels``, ``aux_params``...). With ``aux_params`` smp adds a classification
head on the encoder; the model is then wrapped in :class:`AuxiliaryHeadModel`, which
returns the masks alone in eval mode (validation, TTA, prediction see a plain
segmentation model) and (masks, class logits) in training mode, for the loss's ``aux``
term. Architectures beyond the CNN decoders (Segformer, UPerNet, DPT) and timm encoders
(``tu-convnext_atto``, ``tu-hrnet_w18_small``) come through the same factory.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import segmentation_models_pytorch as smp  # segflow/__init__ turned hub downloads off
import torch

from segflow.weights_cache import is_local

# ImageNet statistics, written out: smp.encoders.get_preprocessing_params may download.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A model that cannot be built as configured (unknown arch, weights not available...)."""


class AuxiliaryHeadModel(torch.nn.Module):
    """An smp model built with ``aux_params``: (masks, class logits) while training,
    the masks alone in eval mode."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    @property
    def encoder(self) -> torch.nn.Module:
        return self.model.encoder

    def forward(self, x: torch.Tensor):
        masks, class_logits = self.model(x)
        return (masks, class_logits) if self.training else masks


def create_model(
    arch: str,
    encoder: str,
    n_classes: int,
    encoder_weights: str | None = None,
    model_args: dict | None = None,
) -> torch.nn.Module:
    """Build ``arch`` with ``encoder`` for ``n_classes`` outputs (logits); see module doc."""
    kwargs = dict(model_args or {})
    check_model_args(arch, encoder, kwargs)
    if kwargs.get("aux_params") is not None:
        kwargs["aux_params"] = {"classes": n_classes, **kwargs["aux_params"]}
    local = is_local(encoder_weights)
    try:
        model = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None if local else encoder_weights,
            classes=n_classes,
            **kwargs,
        )
    except KeyError as e:
        raise ModelError(f"unknown arch {arch!r} or encoder {encoder!r}: {e}") from None
    except TypeError as e:  # an argument the architecture does not take
        raise ModelError(f"model_args {sorted(kwargs)} for {arch}: {e}") from None
    except Exception as e:  # hub errors come in many types; say what to do about them
        if encoder_weights is not None and not local:
            raise ModelError(
                f"encoder_weights {encoder_weights!r} for encoder {encoder!r} could not"
                f" be loaded ({type(e).__name__}: {e}). Downloads are off"
                " (HF_HUB_OFFLINE=1): run once with HF_HUB_OFFLINE=0 and network to"
                " fill the cache (python -m segflow.weights fetch writes it as files"
                " for offline machines), or set encoder_weights to a local weights"
                " file, or null."
            ) from None
        raise
    if local:
        load_encoder_weights(model, encoder_weights)
    if kwargs.get("aux_params") is not None:
        model = AuxiliaryHeadModel(model)
    return model


def check_model_args(arch: str, encoder: str, model_args: dict) -> None:
    """Every key is an argument of ``arch``: smp passes unknown keyword arguments on to
    the encoder, where all but timm's (``tu-``) encoders drop them silently, so a
    misspelt key would train the default model without a word."""
    architecture = smp.MODEL_ARCHITECTURES_MAPPING.get(arch.lower())
    if architecture is None or encoder.startswith("tu-"):
        return  # an unknown arch is reported by the factory; timm takes extra arguments
    parameters = inspect.signature(architecture.__init__).parameters
    unknown = sorted(set(model_args) - set(parameters) - {"self"})
    if unknown:
        known = sorted(
            name
            for name, p in parameters.items()
            if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
        )
        raise ModelError(
            f"model_args {unknown}: not arguments of {arch} (it takes {known})"
        )


def load_encoder_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a local encoder state_dict strictly: an smp encoder's, a whole smp model's
    (its ``encoder.*`` part), or a timm model's for a ``tu-`` encoder (smp keeps the
    timm model under ``model.``; timm's own files have no prefix).

    Every weight of the encoder must be in the file. Keys of layers the encoder has not
    at all (the classifier head, the layers timm's feature extractor drops after its
    last stage) are unused; a key inside one of its layers that it does not have means
    the file is another network's."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"encoder_weights: file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if any(k.startswith("encoder.") for k in state):
        state = {
            k[len("encoder.") :]: v
            for k, v in state.items()
            if k.startswith("encoder.")
        }
    own = model.encoder.state_dict()
    timm_prefix = "model."
    if all(k.startswith(timm_prefix) for k in own) and not any(
        k.startswith(timm_prefix) for k in state
    ):
        state = {timm_prefix + k: v for k, v in state.items()}
    # nn.Module's own method: smp encoders override load_state_dict (drop fc.*, return None).
    try:
        missing, unexpected = torch.nn.Module.load_state_dict(
            model.encoder, state, strict=False
        )
    except RuntimeError as e:  # a weight of another shape under the same name
        reason = str(e).splitlines()[1:2] or [str(e)]
        raise ModelError(
            f"encoder_weights {path}: does not fit the encoder ({reason[0].strip()})"
        ) from None
    layers = {top_layer(k) for k in own}
    unexpected = [k for k in unexpected if top_layer(k) in layers]
    if missing or unexpected:
        raise ModelError(
            f"encoder_weights {path}: does not fit the encoder"
            f" (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def top_layer(key: str) -> str:
    """``model.layer4.1.bn2.weight`` -> ``model.layer4``; ``fc.weight`` -> ``fc``."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "model" else parts[0]
