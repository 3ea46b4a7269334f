"""Compact Transformers (CCT, CVT, ViT-Lite, and their text classifiers) in Flax."""

from compact_flax.checkpoint import load_model, save_model
from compact_flax.models import CCT, CVT, VARIANTS, ViTLite, create_model, list_models
from compact_flax.text import TextCCT, TextCVT, TextTransformerLite, TextViTLite
from compact_flax.zoo import PRETRAINED, load_pretrained

__version__ = '0.1.0'
__all__ = ['CCT', 'CVT', 'ViTLite', 'TextCCT', 'TextCVT', 'TextViTLite', 'TextTransformerLite',
           'VARIANTS', 'create_model', 'list_models', 'load_model',
           'save_model', 'PRETRAINED', 'load_pretrained']
