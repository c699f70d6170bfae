"""A few 3DreamBooth steps data-parallel over processes (launched by tests/test_dreambooth.py with
`accelerate launch --num_processes 2 --cpu`). Each rank writes its adapter weights; DDP must keep them equal."""
import sys, json
from pathlib import Path
import torch
from accelerate import PartialState
from peft.utils import get_peft_model_state_dict
from dreamvid_lib.backbones import ToyBackbone, ToyModelConfig
from dreamvid_lib.pretrain import caption_vocabulary
from dreamvid_lib.adapters import add_lora
from dreamvid_lib.dreambooth import DreamBoothConfig, ViewBatches, train_lora
from dreamvid_lib.multiview import from_views
from dreamvid_lib import toyworld as tw

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
state = PartialState(cpu=not torch.cuda.is_available())
torch.set_num_threads(1)
bb = ToyBackbone.create(caption_vocabulary(), ToyModelConfig(num_layers=1), seed=0)
mv = from_views(tw.multiview_set(tw.heldout_subjects(1)[0], n_views=6, res=32, seed=0))
add_lora(bb, '3db')
cfg = DreamBoothConfig(steps=4, batch_size=2, checkpoint_every=2, preview_prompt='')
log = train_lora(bb, ViewBatches(mv, cfg.batch_size, 32), cfg, out/'work', progress=False)
sd = get_peft_model_state_dict(bb.transformer, adapter_name='3db')
torch.save(sd, out/f'rank{state.process_index}.pt')
(out/f'rank{state.process_index}.json').write_text(json.dumps({'world': state.num_processes, 'losses': [h['loss'] for h in log['history']]}))
