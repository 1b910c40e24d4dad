"""Datasets: registry, in-memory splits and the loaders that register themselves on import."""
from bbench.data.base import Batch, DataInfo, DataModule, KeepMaskDataset, TensorMultimodalDataset
from bbench.data.registry import DATASETS, DatasetEntry, build_datamodule, register_dataset

from bbench.data import mfeat as _mfeat  # noqa: F401,E402  (registers mfeat and its variants)
from bbench.data import synthetic as _synthetic  # noqa: F401,E402  (registers synthetic)

__all__ = ["Batch", "DataInfo", "DataModule", "KeepMaskDataset", "TensorMultimodalDataset",
           "DATASETS", "DatasetEntry", "build_datamodule", "register_dataset"]
