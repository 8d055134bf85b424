"""The exported classifier as a Hugging Face model: AST with DoRA merged, and genre-sweep's MLP head.

This file is copied, as it is, into every exported model folder, and ``config.json``'s ``auto_map`` names
it, so that ``AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True)`` and
``pipeline("audio-classification", model=folder, trust_remote_code=True)`` load our trained classifier
offline without genre-sweep installed. It must import nothing but torch and transformers. Importing it
registers the two classes with transformers' Auto classes (so once ``AutoConfig.from_pretrained(folder,
trust_remote_code=True)`` has read it, ``AutoModelForAudioClassification.from_pretrained(base, config=config)``
builds our classifier over a base checkpoint, as peft's adapter needs), and ``GenreClassifier`` builds its head
and pooling with ``mlp_head`` and ``pooled`` from here, so the two models are one definition.

The head reads the mean of the CLS and distillation tokens after the final LayerNorm, like
``ASTForAudioClassification``, through a LayerNorm and an MLP (Dropout, Linear, GELU, Dropout,
Linear) instead of that class's single Linear layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ASTConfig, ASTModel, ASTPreTrainedModel, AutoConfig, AutoModelForAudioClassification
from transformers.modeling_outputs import SequenceClassifierOutput


def mlp_head(hidden_size: int, hidden: int, n_classes: int) -> nn.Sequential:
    """genre-sweep's classifier MLP: Dropout, Linear, GELU, Dropout, Linear."""
    return nn.Sequential(
        nn.Dropout(0.05),
        nn.Linear(hidden_size, hidden),
        nn.GELU(),
        nn.Dropout(0.1),
        nn.Linear(hidden, n_classes),
    )


def pooled(last_hidden: torch.Tensor) -> torch.Tensor:
    """The mean of the CLS and distillation tokens (the first two) of the final LayerNorm's output."""
    return (last_hidden[:, 0] + last_hidden[:, 1]) / 2


class GenreSweepASTConfig(ASTConfig):
    model_type = "genre-sweep-ast"

    def __init__(self, classifier_hidden_layer_size: int = 200, song_windows: int = 20, **kwargs):
        super().__init__(**kwargs)
        self.classifier_hidden_layer_size = classifier_hidden_layer_size
        self.song_windows = song_windows  # windows per song the folder's pipeline votes over


class GenreSweepASTForAudioClassification(ASTPreTrainedModel):
    config_class = GenreSweepASTConfig

    def __init__(self, config: GenreSweepASTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.audio_spectrogram_transformer = ASTModel(config)
        self.head_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = mlp_head(config.hidden_size, config.classifier_hidden_layer_size, config.num_labels)
        self.post_init()

    def forward(
        self, input_values: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs
    ) -> SequenceClassifierOutput:
        h = self.audio_spectrogram_transformer(input_values).last_hidden_state
        logits = self.head(self.head_norm(pooled(h)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(GenreSweepASTConfig.model_type, GenreSweepASTConfig, exist_ok=True)
AutoModelForAudioClassification.register(GenreSweepASTConfig, GenreSweepASTForAudioClassification, exist_ok=True)
