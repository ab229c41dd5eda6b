"""MedMNIST (v2 / MedMNIST+) as a training and evaluation data source: ``--data medmnist:pneumoniamnist``.

``medmnist:FLAG`` is a 28-pixel set, ``medmnist:FLAG_64`` (``_128``, ``_224`` where published; 3D sets
have 28 and 64) a larger one, exactly as the ``.npz`` files are named. The file is downloaded once
into MedAI's cache (``<cache>/medmnist/``), checked against the MD5 the ``medmnist`` package
publishes, and read with numpy (no ``medmnist`` import). The official train / validation / test
split is used as given. ``$MEDAI_MEDMNIST_URL`` replaces the download location (a mirror, or a
local server for offline tests): the file is fetched from ``$MEDAI_MEDMNIST_URL/<FLAG>.npz``.

Facts below (file names, Zenodo record, MD5s, labels, tasks, sample counts, licences) are copied
from ``medmnist/info.py`` of **medmnist 3.0.2** on PyPI (``pip download --no-deps medmnist==3.0.2``).
Please cite the data as :data:`CITATION` asks; most sets are CC BY 4.0, DermaMNIST is CC BY-NC 4.0.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..fetch import cache_dir, fetch_source
from ..geometry import LPS_TO_RAS, Volume
from .data import Case, DataError, TrainingData

PREFIX = "medmnist:"
SOURCE_VERSION = "medmnist 3.0.2 (medmnist/info.py)"
ZENODO = "https://zenodo.org/records/10519652/files"
MIRROR_ENV = "MEDAI_MEDMNIST_URL"
HOMEPAGE = "https://medmnist.com/"
CITATION = ("Jiancheng Yang, Rui Shi, Donglai Wei, Zequan Liu, Lin Zhao, Bilian Ke, Hanspeter Pfister, Bingbing Ni. "
            "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification. "
            "Scientific Data, 2023 (doi:10.1038/s41597-022-01721-8); and the source data set named on " + HOMEPAGE)
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}

# copied from medmnist 3.0.2 medmnist/info.py INFO: md5 per image size (28 is the file without a size suffix)
DATASETS: dict[str, dict] = {
    'pathmnist': {"task": 'multi-class', "dims": 2, "channels": 3, "licence": 'CC BY 4.0',
        "samples": {'train': 89996, 'val': 10004, 'test': 7180},
        "labels": ['adipose', 'background', 'debris', 'lymphocytes', 'mucus', 'smooth muscle', 'normal colon mucosa', 'cancer-associated stroma', 'colorectal adenocarcinoma epithelium'],
        "md5": {28: 'a8b06965200029087d5bd730944a56c1', 64: '55aa9c1e0525abe5a6b9d8343a507616', 128: 'ac42d08fb904d92c244187169d1fd1d9', 224: '2c51a510bcdc9cf8ddb2af93af1eadec'}},
    'chestmnist': {"task": 'multi-label, binary-class', "dims": 2, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 78468, 'val': 11219, 'test': 22433},
        "labels": ['atelectasis', 'cardiomegaly', 'effusion', 'infiltration', 'mass', 'nodule', 'pneumonia', 'pneumothorax', 'consolidation', 'edema', 'emphysema', 'fibrosis', 'pleural', 'hernia'],
        "md5": {28: '02c8a6516a18b556561a56cbdd36c4a8', 64: '9de6cd0b934ebb5b7426cfba5efbae16', 128: 'db107e5590b27930b62dbaf558aebee3', 224: '45bd33e6f06c3e8cdb481c74a89152aa'}},
    'dermamnist': {"task": 'multi-class', "dims": 2, "channels": 3, "licence": 'CC BY-NC 4.0',
        "samples": {'train': 7007, 'val': 1003, 'test': 2005},
        "labels": ['actinic keratoses and intraepithelial carcinoma', 'basal cell carcinoma', 'benign keratosis-like lesions', 'dermatofibroma', 'melanoma', 'melanocytic nevi', 'vascular lesions'],
        "md5": {28: '0744692d530f8e62ec473284d019b0c7', 64: 'b70a2f5635c6199aeaa28c31d7202e1f', 128: '2defd784463fa5243564e855ed717de1', 224: '8974907d8e169bef5f5b96bc506ae45d'}},
    'octmnist': {"task": 'multi-class', "dims": 2, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 97477, 'val': 10832, 'test': 1000},
        "labels": ['choroidal neovascularization', 'diabetic macular edema', 'drusen', 'normal'],
        "md5": {28: 'c68d92d5b585d8d81f7112f81e2d0842', 64: 'e229e9440236b774d9f0dfef9d07bdaf', 128: '0a97e76651ace45c5d943ee3f65b63ae', 224: 'abc493b6d529d5de7569faaef2773ba3'}},
    'pneumoniamnist': {"task": 'binary-class', "dims": 2, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 4708, 'val': 524, 'test': 624},
        "labels": ['normal', 'pneumonia'],
        "md5": {28: '28209eda62fecd6e6a2d98b1501bb15f', 64: '8f4eceb4ccffa70c672198ea285246c6', 128: '05b46931834c231683c68f40c47b2971', 224: 'd6a3c71de1b945ea11211b03746c1fe1'}},
    'retinamnist': {"task": 'ordinal-regression', "dims": 2, "channels": 3, "licence": 'CC BY 4.0',
        "samples": {'train': 1080, 'val': 120, 'test': 400},
        "labels": ['0', '1', '2', '3', '4'],
        "md5": {28: 'bd4c0672f1bba3e3a89f0e4e876791e4', 64: 'afda852cc34dcda56f86ad2b2457dbcc', 128: 'e48e916a24454daf90583d4e6efb1a18', 224: 'eae7e3b6f3fcbda4ae613ebdcbe35348'}},
    'breastmnist': {"task": 'binary-class', "dims": 2, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 546, 'val': 78, 'test': 156},
        "labels": ['malignant', 'normal, benign'],
        "md5": {28: '750601b1f35ba3300ea97c75c52ff8f6', 64: '742edef2a1fd1524b2efff4bd7ba9364', 128: '363e4b3f8d712e9b5de15470a2aaadf1', 224: 'b56378a6eefa9fed602bb16d192d4c8b'}},
    'bloodmnist': {"task": 'multi-class', "dims": 2, "channels": 3, "licence": 'CC BY 4.0',
        "samples": {'train': 11959, 'val': 1712, 'test': 3421},
        "labels": ['basophil', 'eosinophil', 'erythroblast', 'immature granulocytes(myelocytes, metamyelocytes and promyelocytes)', 'lymphocyte', 'monocyte', 'neutrophil', 'platelet'],
        "md5": {28: '7053d0359d879ad8a5505303e11de1dc', 64: '2b94928a2ae4916078ca51e05b6b800b', 128: 'adace1e0ed228fccda1f39692059dd4c', 224: 'b718ff6835fcbdb22ba9eacccd7b2601'}},
    'tissuemnist': {"task": 'multi-class', "dims": 2, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 165466, 'val': 23640, 'test': 47280},
        "labels": ['Collecting Duct, Connecting Tubule', 'Distal Convoluted Tubule', 'Glomerular endothelial cells', 'Interstitial endothelial cells', 'Leukocytes', 'Podocytes', 'Proximal Tubule Segments', 'Thick Ascending Limb'],
        "md5": {28: 'ebe78ee8b05294063de985d821c1c34b', 64: '123ece2eba09d0aa5d698fda57103344', 128: '61b955355d7425a89687b06cca3ce0c2', 224: 'b077128c4a949f0a4eb01517f9037b9c'}},
    'organamnist': {"task": 'multi-class', "dims": 2, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 34561, 'val': 6491, 'test': 17778},
        "labels": ['bladder', 'femur-left', 'femur-right', 'heart', 'kidney-left', 'kidney-right', 'liver', 'lung-left', 'lung-right', 'pancreas', 'spleen'],
        "md5": {28: '68e3f8846a6bd62f0c9bf841c0d9eacc', 64: '2dcccc29b88e6da5a01161ef20cda288', 128: 'eeae80d0a227a8d099027e1b3cfd3b60', 224: '50747347e05c87dd3aaf92c49f9f3170'}},
    'organcmnist': {"task": 'multi-class', "dims": 2, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 12975, 'val': 2392, 'test': 8216},
        "labels": ['bladder', 'femur-left', 'femur-right', 'heart', 'kidney-left', 'kidney-right', 'liver', 'lung-left', 'lung-right', 'pancreas', 'spleen'],
        "md5": {28: 'b9ceb9546e10131b32923c5bbeaea2b1', 64: '3ce34a8724ea6f548e6db4744d03b6a9', 128: '773c1f009daa3fe5d9a2a201b2a7ed94', 224: '050f5e875dc056f6768abf94ec9995d1'}},
    'organsmnist': {"task": 'multi-class', "dims": 2, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 13932, 'val': 2452, 'test': 8827},
        "labels": ['bladder', 'femur-left', 'femur-right', 'heart', 'kidney-left', 'kidney-right', 'liver', 'lung-left', 'lung-right', 'pancreas', 'spleen'],
        "md5": {28: '9ab87b696fb54e2a387ebe992d6ed5f1', 64: '53a6d115339d874c25e309a994ff46d3', 128: 'ded0c5fa01a95dc4978b956f613e9b8e', 224: 'b354719e553fbbb2513d5533f52a4cb1'}},
    'organmnist3d': {"task": 'multi-class', "dims": 3, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 971, 'val': 161, 'test': 610},
        "labels": ['liver', 'kidney-right', 'kidney-left', 'femur-right', 'femur-left', 'bladder', 'heart', 'lung-right', 'lung-left', 'spleen', 'pancreas'],
        "md5": {28: 'a0c5a1ff56af4f155c46d46fbb45a2fe', 64: '58a2205adf14a9d0a189cb06dc78bf10'}},
    'nodulemnist3d': {"task": 'binary-class', "dims": 3, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 1158, 'val': 165, 'test': 310},
        "labels": ['benign', 'malignant'],
        "md5": {28: '8755a7e9e05a4d9ce80a24c3e7a256f3', 64: 'c47c5b7d457bf6332200d2ea6d64ecd8'}},
    'adrenalmnist3d': {"task": 'binary-class', "dims": 3, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 1188, 'val': 98, 'test': 298},
        "labels": ['normal', 'hyperplasia'],
        "md5": {28: 'bbd3c5a5576322bc4cdfea780653b1ce', 64: '17721accfe9fb005146a47d33bc54b2f'}},
    'fracturemnist3d': {"task": 'multi-class', "dims": 3, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 1027, 'val': 103, 'test': 240},
        "labels": ['buckle rib fracture', 'nondisplaced rib fracture', 'displaced rib fracture'],
        "md5": {28: '6aa7b0143a6b42da40027a9dda61302f', 64: 'f01d7e6316aedf4210da0da5b7437b42'}},
    'vesselmnist3d': {"task": 'binary-class', "dims": 3, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 1335, 'val': 191, 'test': 382},
        "labels": ['vessel', 'aneurysm'],
        "md5": {28: 'b41fd4f7e7e2feedddb201585ecafa1b', 64: '6bb274a8846e1097066dcd64e2c4520f'}},
    'synapsemnist3d': {"task": 'binary-class', "dims": 3, "channels": 1, "licence": 'CC BY 4.0',
        "samples": {'train': 1230, 'val': 177, 'test': 352},
        "labels": ['inhibitory synapse', 'excitatory synapse'],
        "md5": {28: '1235b78a3cd6280881dd7850a78eadb6', 64: '43bd14ebf3af9d3dd072446fedc14d5e'}},
}

def parse(spec: str) -> tuple[str, int]:
    """``"medmnist:pneumoniamnist_64"`` -> ``("pneumoniamnist", 64)``; refuses unknown sets and sizes."""
    text = spec[len(PREFIX):] if spec.lower().startswith(PREFIX) else spec
    flag, _, size_text = text.strip().lower().partition("_")
    if flag not in DATASETS:
        raise DataError(f"{spec}: no MedMNIST set {flag!r}; known: {', '.join(DATASETS)}")
    size = int(size_text) if size_text.isdigit() else 28 if not size_text else -1
    if size not in DATASETS[flag]["md5"]:
        sizes = ", ".join(f"{flag}" if s == 28 else f"{flag}_{s}" for s in DATASETS[flag]["md5"])
        raise DataError(f"{spec}: {flag} is published as {sizes}")
    return flag, size


def file_name(flag: str, size: int) -> str:
    return f"{flag}{'' if size == 28 else f'_{size}'}.npz"


def source(flag: str, size: int) -> dict:
    """The fetch source (URL, MD5, cache file name) of one MedMNIST file; ``$MEDAI_MEDMNIST_URL`` names a mirror."""
    name = file_name(flag, size)
    mirror = os.environ.get(MIRROR_ENV)
    url = f"{mirror.rstrip('/')}/{name}" if mirror else f"{ZENODO}/{name}?download=1"
    return {"url": url, "md5": DATASETS[flag]["md5"][size], "file": name}


def fetch(spec: str, progress=None) -> Path:
    """The ``.npz`` of ``spec`` in MedAI's cache, downloaded and MD5-checked when not there yet."""
    flag, size = parse(spec)
    return fetch_source(source(flag, size), cache_dir() / "medmnist", f"MedMNIST {file_name(flag, size)}", progress)[file_name(flag, size)]


def task_of(flag: str) -> str:
    """MedAI's task for a MedMNIST task: multi-label sets are ``multilabel``; binary, multi-class and ordinal ``classification``."""
    return "multilabel" if DATASETS[flag]["task"].startswith("multi-label") else "classification"


def describe(spec: str) -> str:
    """One paragraph for a person: what the set is, its size, licence and how to cite it."""
    flag, size = parse(spec)
    info = DATASETS[flag]
    n = info["samples"]
    return (f"MedMNIST {file_name(flag, size)}: {info['task']} ({', '.join(info['labels'])}), "
            f"{n['train']} / {n['val']} / {n['test']} train / validation / test images (the official split), "
            f"{size}{'^3' if info['dims'] == 3 else 'x' + str(size)} voxels. Licence {info['licence']}. Cite: {CITATION}")


def load(spec: str, progress=None) -> TrainingData:
    """Every image of a MedMNIST set as an in-memory case, with the set's own split, classes and licence.

    2D images become single-slice volumes ``[1, H, W]`` (RGB sets: vector volumes) on the grid a PNG
    of the same pixels gets from :func:`medai.io.read_image`, so a model trained here reads PNG, JPEG
    and DICOM radiographs the same way; 3D images are ``[D, H, W]`` volumes of 1 mm voxels.
    """
    flag, size = parse(spec)
    path = fetch(spec, progress)
    info = DATASETS[flag]
    try:
        npz = np.load(path)
        arrays = {s: (npz[f"{s}_images"], npz[f"{s}_labels"]) for s in SPLIT_NAMES}
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a MedMNIST .npz with train/val/test images and labels ({exc}); delete it and fetch again") from exc
    task = task_of(flag)
    cases = []
    for split, (images, labels) in arrays.items():
        for n, (image, label) in enumerate(zip(images, labels)):
            array = image[None] if info["dims"] == 2 else image
            volume = Volume(np.ascontiguousarray(array), LPS_TO_RAS.copy(), f"{flag}_{split}_{n}")
            label = np.asarray(label).reshape(-1)
            target = [float(v) for v in label] if task == "multilabel" else float(label[0])
            cases.append(Case(f"{split}_{n:06d}", target=target, split=SPLIT_NAMES[split], volumes=[volume]))
    desc = {"source": "medmnist", "name": f"MedMNIST {file_name(flag, size)[:-4]}", "path": str(path),
            "url": source(flag, size)["url"], "md5": info["md5"][size], "facts_from": SOURCE_VERSION,
            "description": describe(spec), "reference": CITATION, "licence": info["licence"], "cases": len(cases),
            "official_split": {SPLIT_NAMES[s]: int(len(a[0])) for s, a in arrays.items()}}
    channels = ["red", "green", "blue"] if info["channels"] == 3 else ["image"]
    return TrainingData(cases, task, classes=list(info["labels"]), description=desc, modalities=channels)
