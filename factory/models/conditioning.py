"""Conditioning of the diffusion UNets: clinical values, scanner vendor and cardiac phase -> cross-attention tokens.

`CLINICAL_SCALARS` is the one list of scalar conditions; `ClinicalNormalizer` standardises them
(its statistics travel in the model bundle's JSON); `ClinicalEncoder` turns a diagnosis, the
normalised scalars and (for bundles with a vendor vocabulary) the vendor into context tokens, with
per-sample drops for classifier-free guidance; `PhaseEmbedding` turns the cardiac phase into one
more token for the motion model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from factory.errors import InputError
from factory.vocabulary import DIAGNOSES, PHASE_CYCLE

CLINICAL_SCALARS: tuple[str, ...] = ("edv_ml", "esv_ml", "ef_pct", "myo_mass_g", "n_slices")
NULL_DIAGNOSIS = len(DIAGNOSES)  # the "unconditional" diagnosis id of classifier-free guidance
NO_VENDOR = ("", "unknown", "synthetic")  # vendor values that name no scanner: the null vendor id


def vendor_vocabulary(values: Sequence[object]) -> list[str]:
    """The vendors a cohort names (sorted; missing, 'unknown' and 'synthetic' are no vendor): the token's vocabulary."""
    return sorted({str(v) for v in values if isinstance(v, str) and v.strip() and v not in NO_VENDOR})


def vendor_ids(names: Sequence[object], vocabulary: Sequence[str], strict: bool = True) -> torch.Tensor:
    """Vendor names -> long tensor of ids into `vocabulary`; the null id (len(vocabulary)) for no vendor.

    `strict`: a name outside the vocabulary is refused, naming it and the vocabulary (plans); otherwise
    it gets the null id (training subjects of a vendor the bundle does not know).
    """
    vocabulary = list(vocabulary)
    unknown = sorted({n for n in names if isinstance(n, str) and n not in vocabulary and n not in NO_VENDOR})
    if unknown and strict:
        raise InputError(f"unknown vendor {unknown}; this bundle knows {vocabulary}")
    return torch.tensor([vocabulary.index(n) if n in vocabulary else len(vocabulary) for n in names],
                        dtype=torch.long)


def diagnosis_ids(names: Sequence[str]) -> torch.Tensor:
    """Diagnosis names (e.g. "DCM") -> long tensor of ids into DIAGNOSES."""
    unknown = sorted(set(names) - set(DIAGNOSES))
    if unknown:
        raise InputError(f"unknown diagnosis {unknown}; expected one of {list(DIAGNOSES)}")
    return torch.tensor([DIAGNOSES.index(name) for name in names], dtype=torch.long)


class ClinicalNormalizer:
    """Per-scalar mean/std standardisation of CLINICAL_SCALARS, fitted on a cohort table."""

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)

    @staticmethod
    def _columns(table: Any) -> np.ndarray:
        """(B, S) float64 array of the scalars from a DataFrame or a dict of arrays / numbers."""
        missing = [name for name in CLINICAL_SCALARS if name not in table]
        if missing:
            raise InputError(f"clinical table lacks columns {missing}")
        return np.stack([np.atleast_1d(np.asarray(table[name], dtype=np.float64))
                         for name in CLINICAL_SCALARS], axis=1)

    def fit(self, table: Any) -> Self:
        """Fit mean/std per scalar (ignoring NaN) on a DataFrame or dict of arrays; returns self."""
        values = self._columns(table)
        empty = [name for name, col in zip(CLINICAL_SCALARS, values.T) if np.isnan(col).all()]
        if empty:
            raise InputError(f"clinical table has no values for {empty}")
        self.mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        self.std = np.where(std > 1e-6, std, 1.0)  # a constant column is centred, not blown up
        return self

    def transform(self, table: Any) -> torch.Tensor:
        """DataFrame or dict of arrays -> float32 tensor (B, S) of standardised scalars."""
        if self.mean is None or self.std is None:
            raise InputError("ClinicalNormalizer is not fitted: call fit(table) or from_dict(...)")
        values = self._columns(table)
        bad = [name for name, col in zip(CLINICAL_SCALARS, values.T) if not np.isfinite(col).all()]
        if bad:
            raise InputError(f"clinical values {bad} contain NaN/inf; fill them or drop the condition")
        return torch.from_numpy((values - self.mean) / self.std).float()

    def to_dict(self) -> dict[str, list]:
        """JSON-ready statistics (stored in the model bundle's config)."""
        if self.mean is None or self.std is None:
            raise InputError("ClinicalNormalizer is not fitted")
        return {"scalars": list(CLINICAL_SCALARS), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClinicalNormalizer:
        """Inverse of `to_dict`; refuses statistics fitted for another scalar list."""
        if list(data.get("scalars", [])) != list(CLINICAL_SCALARS):
            raise InputError(f"normalizer was fitted for scalars {data.get('scalars')}, "
                             f"this code uses {list(CLINICAL_SCALARS)}")
        return cls(data["mean"], data["std"])


class ClinicalEncoder(nn.Module):
    """(diagnosis, scalars[, vendor]) -> (B, n_tokens[+1], context_dim): a diagnosis token, scalar tokens, and a
    vendor token when the encoder has a vendor vocabulary (`n_vendors` > 0).

    `drop[i]` swaps sample i's diagnosis for the null id and its scalar tokens for learned null
    tokens; `drop_vendor[i]` swaps its vendor for the null vendor id. Both together give the
    unconditional branch of classifier-free guidance; training drops them independently.
    """

    def __init__(self, context_dim: int, n_tokens: int = 4, n_scalars: int = len(CLINICAL_SCALARS),
                 n_diagnoses: int = len(DIAGNOSES), n_vendors: int = 0) -> None:
        super().__init__()
        self.n_scalar_tokens = n_tokens - 1
        self.n_vendors = n_vendors
        self.diagnosis = nn.Embedding(n_diagnoses + 1, context_dim)  # last id = null
        self.scalars = nn.Sequential(nn.Linear(n_scalars, context_dim), nn.SiLU(),
                                     nn.Linear(context_dim, self.n_scalar_tokens * context_dim))
        self.null_scalars = nn.Parameter(torch.randn(self.n_scalar_tokens, context_dim) * 0.02)
        if n_vendors:
            self.vendor = nn.Embedding(n_vendors + 1, context_dim)  # last id = null
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, diagnosis: torch.Tensor, scalars: torch.Tensor, drop: torch.Tensor | None = None,
                vendor: torch.Tensor | None = None, drop_vendor: torch.Tensor | None = None) -> torch.Tensor:
        batch = diagnosis.shape[0]
        scalar_tokens = self.scalars(scalars).view(batch, self.n_scalar_tokens, -1)
        if drop is not None:
            drop = drop.to(device=diagnosis.device, dtype=torch.bool)
            diagnosis = torch.where(drop, torch.full_like(diagnosis, self.diagnosis.num_embeddings - 1),
                                    diagnosis)
            scalar_tokens = torch.where(drop[:, None, None], self.null_scalars.to(scalar_tokens.dtype),
                                        scalar_tokens)
        tokens = [self.diagnosis(diagnosis)[:, None], scalar_tokens]
        if self.n_vendors:
            if vendor is None:
                raise ValueError("this encoder has a vendor vocabulary: pass vendor ids (the null id for none)")
            if drop_vendor is not None:
                vendor = torch.where(drop_vendor.to(device=vendor.device, dtype=torch.bool),
                                     torch.full_like(vendor, self.n_vendors), vendor)
            tokens.append(self.vendor(vendor)[:, None])
        return self.norm(torch.cat(tokens, dim=1))


class PhaseEmbedding(nn.Module):
    """Cardiac phase (B,) in [0, PHASE_CYCLE) -> one token (B, 1, context_dim).

    Fourier features of the phase with period PHASE_CYCLE (200), so the next ED embeds exactly like
    phase 0 and the cycle closes; an MLP maps them to the context width.
    """

    def __init__(self, context_dim: int, n_harmonics: int = 16) -> None:
        super().__init__()
        self.register_buffer("harmonics", torch.arange(1, n_harmonics + 1, dtype=torch.float32),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_harmonics, context_dim), nn.SiLU(),
                                 nn.Linear(context_dim, context_dim), nn.LayerNorm(context_dim))

    def forward(self, phase: torch.Tensor) -> torch.Tensor:
        angle = (2 * math.pi / PHASE_CYCLE) * phase.float()[:, None] * self.harmonics
        return self.mlp(torch.cat([angle.sin(), angle.cos()], dim=1))[:, None]


def fit_mass_model(table: Any) -> dict[str, list[float]]:
    """Per-diagnosis least-squares line myo_mass_g = a * edv_ml + b, fitted on a cohort table.

    Plans ask for volumes; the anatomy model is also conditioned on myocardial mass, so a plan row
    without a mass gets the cohort's typical mass for its diagnosis and EDV. Diagnoses with fewer
    than 3 subjects fall back to the fit over all subjects.
    """
    rows = table.dropna(subset=["edv_ml", "myo_mass_g", "diagnosis"])
    if len(rows) < 3:
        raise InputError("need at least 3 subjects with EDV, myocardial mass and diagnosis to fit the mass model")

    def line(group) -> list[float]:
        slope, intercept = np.polyfit(group["edv_ml"].astype(float), group["myo_mass_g"].astype(float), 1)
        return [float(slope), float(intercept)]

    overall = line(rows)
    return {d: line(rows[rows["diagnosis"] == d]) if (rows["diagnosis"] == d).sum() >= 3 else overall
            for d in DIAGNOSES}
