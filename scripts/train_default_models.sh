#!/usr/bin/env bash
# Train the two shipped default models with `medai train`, from the MNI152 sample (derived labels).
# Usage: bash scripts/train_default_models.sh   (about 5 minutes on 2 CPU cores; deterministic seeds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=${MEDAI_TRAIN_WORK:-.cache/medai-train-data}  # inside the checkout (ignored), so cards record a stable relative path
echo "building the derived MNI152 datasets in $WORK"
$PY - "$WORK" <<'PYEOF'
import sys
from pathlib import Path
from medai.models.catalog import fetch_sample
from medai.training.sample_data import make_tissue_patches, make_tissue_slabs
files = fetch_sample("mni152-t1")
work = Path(sys.argv[1])
make_tissue_slabs(files, work / "tissue-slabs", slab_mm=20)
make_tissue_patches(files, work / "tissue-patches", patch=16, per_class=600)
PYEOF
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
rm -rf Resources/Models/mni-tissue-unet Resources/Models/mni-tissue-patch-resnet
$PY -m medai.cli train --data "$WORK/tissue-slabs" --task segmentation --network unet \
  --network-args '{"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}' \
  --roi 48,48,12 --spacing 2,2,2 --intensity percentile --epochs 100 --batch-size 8 --samples-per-case 8 \
  --steps-per-epoch 6 --lr 3e-3 --val-every 2 --patience 15 --seed 0 --device cpu \
  --data-note "Labels DERIVED from the MNI152 2009a GM/WM probability maps (threshold 0.5), not manual; one template brain, cases are non-overlapping axial slabs." \
  --name mni-tissue-unet -o Resources/Models/mni-tissue-unet
$PY -m medai.cli train --data "$WORK/tissue-patches/patches.csv" --task classification --network resnet \
  --network-args '{"block_inplanes": [8, 16, 32, 64], "layers": [1, 1, 1, 1], "conv1_t_size": 3, "conv1_t_stride": 2}' \
  --roi 16,16,16 --intensity '[{"op": "scale_range", "a_min": 0, "a_max": 255, "b_min": 0, "b_max": 1}]' \
  --epochs 60 --batch-size 32 --lr 3e-3 --val-every 2 --patience 10 --seed 0 --device cpu \
  --data-note "Labels DERIVED from the MNI152 2009a GM/WM probability maps (threshold 0.5) at each patch's centre voxel, not manual; all patches come from one template brain, train/validation/test from separate axial slabs." \
  --region-margin 0 --name mni-tissue-patch-resnet -o Resources/Models/mni-tissue-patch-resnet
# keep only what a catalog entry needs (card, weights, split, curves, test report)
for m in mni-tissue-unet mni-tissue-patch-resnet; do rm -f Resources/Models/$m/checkpoint_last.pt; done
echo "done; models in Resources/Models/ (catalog entries: Resources/Catalog/models.d/trained.json)"
