#!/usr/bin/env bash
# One lent GPU's work, as one call of the device tool (`run`), each part bounded so that one failure costs only itself:
#   1. the ring set of $SUBJ subjects rendered on the CPU cores (in the background; Mitsuba must be there, else put the
#      cached .npz files in $DREAMVID_CACHE first: the H200 image has no Mitsuba and its wheel is too big to carry),
#   2. benchmarks/bench_wan_gpu.py at full size (Wan2.1-T2V-1.3B, random weights, bf16) -> $OUT/bench_wan_gpu.json,
#   3. the orbit prior (issue 12) continued in bf16 with large batches, two-frame and eight-frame windows side by side,
#      from the committed research checkpoints (INIT2, INIT8), until $TRAIN_S seconds -> $OUT/w2.pt, $OUT/w8.pt and
#      their logs; IMG adds flags to the two-frame run (e.g. IMG="--image-every 2 --batch-images 512": text-to-image
#      batches mixed in, so that one model draws frame 0 from text and continues it),
#      beside them (UNET=1, the default) the text-to-image U-Net of row 54 (research/orbit_prior/unet_t2i.py, the frame 0
#      of text-started videos) at width $UW and batch $BU from the committed CPU weights (UINIT) -> $OUT/unet.pt, unet.log,
#      and (NVS=1, the default) the camera-conditioned U-Net of rows 55-56 (research/orbit_prior/unet_nvs.py: each frame
#      drawn from frame 0, no rollout) at batch $BN in bf16 from the committed CPU weights of the curriculum's last stage (row 64) (NINIT,
#      1 -> 16 -> 1,000 -> 3,000 -> 10,000 subjects; here the next rung, $SUBJ subjects) -> $OUT/nvs.pt, nvs.log,
#   4. benchmarks/bench_hunyuan_gpu.py at full size (HunyuanVideo-1.5 8.3 B) with the time left -> $OUT/bench_hunyuan_gpu.json
#      (with gradient checkpointing unless GC=0: without it the joint K = 4 step at 720p ran out of the H200's 140 GB).
#
#   bash research/gpu/h200_run.sh                 # on the GPU (OUT, BUDGET, SUBJ, TRAIN_S, B2, B8 from the environment)
#   TINY=1 OUT=/tmp/o bash research/gpu/h200_run.sh   # the same steps on the CPU at toy sizes (a smoke test)
set -u
OUT=${OUT:?set OUT}; BUDGET=${BUDGET:-420}; T0=$(date +%s); TINY=${TINY:-0}; PY=${PY:-python3}
SUBJ=${SUBJ:-3000}; WAN=${WAN:-1}; GC=${GC:-1}; IMG=${IMG:-}; TRAIN_S=${TRAIN_S:-150}; B2=${B2:-256}; B8=${B8:-64}; WORKERS=${WORKERS:-14}
UNET=${UNET:-1}; UW=${UW:-16}; BU=${BU:-512}; NVS=${NVS:-1}; BN=${BN:-512}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} DREAMVID_CACHE=${DREAMVID_CACHE:-/tmp/dvcache}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/device.log"; }
W=research/orbit_prior/window_ladder.py; CK=research/orbit_prior/weights
if [ "$TINY" = 1 ]; then DEV="--device cpu"; TB="--tiny"; SUBJ=${SUBJ_TINY:-20}; TRAIN_S=${TRAIN_S_TINY:-20}; B2=4; B8=2; WORKERS=2
  UD="--device cpu --batch 4 --eval-subjects 1 --sample-steps 2"; ND="--device cpu --batch 4 --eval-subjects 1 --sample-steps 2 --eval-every 2"
else DEV="--device cuda --bf16"; TB=""; UD="--device cuda --batch $BU"; ND="--device cuda --mixed-precision bf16 --batch $BN --eval-every 500"; fi
{ nvidia-smi 2>&1 | head -20; $PY -c "import torch, diffusers, peft, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"; nproc; } >> "$OUT/device.log" 2>&1
log "start: SUBJ=$SUBJ TRAIN_S=$TRAIN_S B2=$B2 B8=$B8 BUDGET=$BUDGET"
$PY -c "from dreamvid_lib.core import cache_dir; from dreamvid_lib import toyworld as tw
tw.build_ring_dataset(cache_dir(), 16, split='heldout', workers=2); tw.build_ring_dataset(cache_dir(), $SUBJ, workers=$WORKERS)" 2>&1 \
  | tr '\r' '\n' | grep -v '^rings:' >> "$OUT/device.log" &
RENDER=$!
if [ "$WAN" = 1 ]; then log "wan bench"
  timeout 100 $PY benchmarks/bench_wan_gpu.py $TB --steps 3 --json "$OUT/bench_wan_gpu.json" >> "$OUT/bench.log" 2>&1; log "wan bench rc=$?"; fi
wait $RENDER; log "rings rendered"
H="--subjects $SUBJ --eval-heldout 16 --ema 0.999 --cond-sigma 0.3 --lr 5e-4 --eval-every 500 --steps 1000000 --time-limit $TRAIN_S"
$PY $W --frames 2 --sigma uniform --batch $B2 $H $DEV $IMG --init ${INIT2:-$CK/row43_window2_h200.pt} --save "$OUT/w2.pt" > "$OUT/train2.log" 2>&1 &
P2=$!
$PY $W --frames 8 --sigma mix --batch $B8 $H $DEV --init ${INIT8:-$CK/row42_window8_h200.pt} --save "$OUT/w8.pt" > "$OUT/train8.log" 2>&1 &
P8=$!
if [ "$UNET" = 1 ]; then
  UI=${UINIT-$CK/row54_unet_front.pt}
  $PY research/orbit_prior/unet_t2i.py $UD --width $UW --subjects $SUBJ --lr 1e-3 --eval-every 1000 --steps 1000000 --time-limit $TRAIN_S \
    ${UI:+--init $UI} --save "$OUT/unet.pt" > "$OUT/unet.log" 2>&1 &
  PU=$!
fi
if [ "$NVS" = 1 ]; then
  NI=${NINIT-$CK/row64_unet_nvs_10000.pt}
  $PY research/orbit_prior/unet_nvs.py $ND --subjects $SUBJ --camera-planes --sigma-one 0.5 --lr 1e-3 --steps 1000000 --time-limit $TRAIN_S \
    ${NI:+--init $NI} --work "$OUT/nvs_work" --save "$OUT/nvs.pt" > "$OUT/nvs.log" 2>&1 &
  PN=$!
fi
wait $P2; log "train2 rc=$?"; wait $P8; log "train8 rc=$?"
if [ "$UNET" = 1 ]; then wait $PU; log "unet rc=$?"; fi
if [ "$NVS" = 1 ]; then wait $PN; log "nvs rc=$?"; rm -rf "$OUT/nvs_work"; fi
HS=$(( $(left) - 5 )); log "hunyuan bench, $HS s left"
if [ $HS -gt 40 ]; then
  timeout $HS $PY benchmarks/bench_hunyuan_gpu.py $TB --steps 3 --gen-steps 2 $([ "$GC" = 1 ] && echo --gradient-checkpointing) --out "$OUT/bench_hunyuan_gpu.json" >> "$OUT/bench.log" 2>&1; log "hunyuan bench rc=$?"
fi
log "done"
