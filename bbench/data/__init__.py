"""Datasets: registry, in-memory splits and the loaders that register themselves on import."""
from bbench.data.base import Batch, DataInfo, DataModule, KeepMaskDataset, TensorMultimodalDataset
from bbench.data.registry import DATASETS, DatasetEntry, build_datamodule, register_dataset

from bbench.data import mfeat as _mfeat  # noqa: F401,E402  (registers mfeat and its variants)
from bbench.data import synthetic as _synthetic  # noqa: F401,E402  (registers synthetic)
from bbench.data import cremad as _cremad  # noqa: F401,E402  (the seven paper datasets)
from bbench.data import kinetics_sounds as _kinetics_sounds  # noqa: F401,E402
from bbench.data import balanced_av as _balanced_av  # noqa: F401,E402
from bbench.data import vggsound as _vggsound  # noqa: F401,E402
from bbench.data import ucf101 as _ucf101  # noqa: F401,E402
from bbench.data import food101 as _food101  # noqa: F401,E402
from bbench.data import cmu_mosei as _cmu_mosei  # noqa: F401,E402

__all__ = ["Batch", "DataInfo", "DataModule", "KeepMaskDataset", "TensorMultimodalDataset",
           "DATASETS", "DatasetEntry", "build_datamodule", "register_dataset"]
