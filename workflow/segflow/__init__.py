"""segflow: COCO segmentation competition dataset -> submission CSV, as a Snakemake workflow.

Two kinds of module, and imports run one way (tests/test_layers.py holds it):

Steps, each a plain function with a thin ``python -m segflow.<step>`` command line that
one rule calls; no step imports another step:
  demo, index, eda, folds, train, predict, oof_score, clean, pseudo, ensemble,
  submission, demo_score, demo_noise_score, leaderboard.

Commands a user runs, which no rule calls (they import libraries only):
  status         where the whole run stands: every training job's progress
  convert        images + label PNGs -> the COCO file segflow reads (lossless)
  init           your COCO files -> a config overlay, checked, and the command to run
  weights        pretrained encoder weights into a local cache, with checksums

Libraries, shared by the steps; a library never imports a step:
  settings       the validated config as typed settings; config checks; data paths
  coco           COCO reading, validation and the one mask rasterization
  images         the one image reader and the EXIF orientation rule
  groups         related images: file-name sequences, near-duplicates, fold leaks
  labels         label maps on disk: mask paths, read/write, nearest resize,
                 IGNORE_INDEX, what unlabelled pixels are (background or ignored)
  tables         column names of the index tables
  probabilities  stored probabilities: uint8 encode/decode, memmap writer, member reader
  metrics        the competition mIoU from one confusion matrix
  models         the model factory (smp), offline-safe encoder weights
  weights_cache  where encoder weights come from: local file or cached named set
  checkpoints    save/load a state_dict with the settings that rebuild the model
  losses         the weighted loss terms
  mixing         batch mixing augmentations: MixUp, CutMix, Copy-Paste
  averaging      weight averaging of a run: EMA, SWA, top-k epochs
  class_balance  rare classes: ce class weights, repeat-factor sampling
  sliding_window overlapping tiles blended toward their centres, for large images
  postprocess    small connected components removed, the areas tuned on OOF
  data           datasets, albumentations pipelines, loaders
  input_size     sizes (height, width): what a model sees (arch multiples, mixed sizes)
  fold_data      which images and labels a fold job of a round trains and validates on
  fold_loaders   a training job's loaders, which epoch uses which, their random state
  epoch          one epoch of a training job: training pass, validation pass, history row
  run_state      what a training run changes (weights, optimizer, best epoch...): resume
  optim          optimizers and learning-rate schedules
  runtime        seeds, threads, autocast, batches on the device
  device         which GPU a job takes (a lock per device)
  preflight      checks before the first job: imports, GPU, disk (the workflow's onstart)
  tracking       wandb runs
  progress       a training job's live progress.json and curves.png
  label_noise    scoring labels against OOF probabilities (confident learning)
  submission_format  the competition CSV: encode, decode, check
  viz            palette, overlays, figure encoding
  io             atomic writes, id sidecars
  step_cli       a step's command line, derived from its declared arguments
"""

import os

# Hub downloads off unless the user says otherwise: huggingface_hub reads this once, at
# its import (albumentations, timm and smp import it), so it is set before any of them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
