"""VQA fine-tuning configs. Presets by string argument, big_vision style:

    python -m semrel_jax.main --config=configs/vqa.py --workdir=/tmp/run          # = :objects_lsrm (DEFAULT)
    python -m semrel_jax.main --config=configs/vqa.py:tiny --workdir=/tmp/run
    python -m semrel_jax.main --config=configs/vqa.py --config.train.num_steps=100 --workdir=/tmp/run

Presets:
  demo  LSRM from random init on the built-in Sort-of-CLEVR, one memory slot per patch, with the
        slot-reconstruction loss (train.reconstruction_weight) that keeps the tower from forgetting shapes; a few
        minutes on a 2-core CPU. The default until 2026-12-06; the base of the model presets and ablations.
  tiny  the same structure at toy size, for tests and smoke runs (seconds).
  long  the demo trained ~7x longer: about 30 minutes on a 2-core CPU.
  relational  the relational-accuracy target on Sort-of-CLEVR (Santoro et al.'s Relation Network: > 94 %):
        objects (below) with Sort-of-CLEVR's curriculum and the LLM's distance heads started with slopes, from
        question-answer pairs alone, each object reading the others; 18,000 steps × 64, ~25 CPU-minutes on one
        core (README, "Results"). Before session 36 this name was the demo with a 3-block ViT and relations
        descriptions (0.851; docs/research.md).
  scratch  a from-scratch recipe for any dataset, learning from question-answer pairs alone (no scene
        descriptions): the demo with pixels normalised against each image's own background colour
        (normalization='background'), so empty patches carry only position whatever the background, and a
        softmax memory read (model.ica.read) beside the paper's SiLU one, and the evaluation repeated with
        other examples' images (eval.image_control) (experiments/LOG.md, "Relational sets in LLaVA JSON"; far
        from the issue's goals at the budgets measured there). For llava_json add --config.data.prompt_format=raw.
  objects  scratch for scenes of flat objects on a background (Sort-of-CLEVR and the generated relational sets):
        one token per object read by the LLM in its own sequence, a block in which each object attends to the
        others, a 3-block LLM that reads the objects and the question both ways with a distance bias between
        objects, the probe's optimiser at its peak rate until the last quarter; 14,000 steps.
        Give the curriculum for your kinds and the image size,
        e.g. "--config.data.curriculum=('shape+left_of:6000:5000','left_of+above:6000:2500:0.05',...)"
        (README, "Your own relational data"); the best figures so far.
  objects_lsrm  objects with LSRM's memory in place of the prefix (ICA over the object slots, the objects before
        and after the tower's block as two levels, the learnable diagonal, the inheritance mask: the ablation's
        ablation_lsrm knobs) and 30 % scene descriptions; 2,000 steps × 64. The default: the demo's relational
        goal in a few minutes (relational 0.721 against a majority of 0.439, non-relational 0.998; README).
  semrel_jax.presets.MODEL_PRESETS: the release's full-size models (lsrm_7b, lsrm_13b, memvp_7b,
        llava_7b), the ensemble lsrm_7b_ensemble (CLIP-L/14 + SigLIP + DINOv2) and the demo-size ablation
        steps (ablation_memvp ... ablation_lsrm, ablation_llava).
  <preset>+name / -name: any preset with vision encoders added or removed (semrel_jax.presets.ENCODER_PRESETS:
        clip, siglip, dinov2), e.g. lsrm_7b+siglip or tiny+siglip-vit; then --config.model.encoders.siglip.hf_dir=...
"""

import ml_collections

from semrel_jax import presets as model_presets
from semrel_jax.config import defaults as config_defaults

DEFAULT = "objects_lsrm"  # what --config=configs/vqa.py trains (README's Quickstart)
PRESETS = ("demo", "tiny", "long", "relational", "scratch", "objects", "objects_lsrm") + model_presets.MODEL_PRESETS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or DEFAULT
    if model_presets.is_model_preset(preset):  # e.g. lsrm_7b, lsrm_7b+siglip+dinov2
        return model_presets.apply(get_config("demo"), preset)
    base, encoder_changes = model_presets.split_encoder_changes(preset)
    if encoder_changes:  # e.g. tiny+siglip: encoders added (+name) / removed (-name), semrel_jax/presets.py
        c = model_presets.change_encoders(get_config(base), encoder_changes)
        c.preset = preset
        return c
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r} for configs/vqa.py; choose one of {PRESETS}.")
    c = config_defaults.base_config()  # every key and its default: semrel_jax/config/defaults.py
    c.preset = preset
    # the demo's data: 60 % of the training examples are scene descriptions of the same images
    # ("red square top left green circle ..."): they teach every object's attributes densely (docs/research.md)
    c.data.update(name="sort_of_clevr", caption_mix=0.6, caption_kinds=("objects",), max_text_len=34)
    # from random init the release's scales (ica.scale 0.1, projector.memory_scale 0.01: tuned for a large,
    # frozen residual stream) only slow learning down
    c.model.ica.scale = 1.0
    c.model.projector.memory_scale = 0.1
    c.model.encoders.vit.act = "gelu"
    # from random init the tower forgets what its objects look like before the answers learn to ask (an object's
    # shape: as decodable from its memory slot as from its pixels at step 0, at chance after training); decoding
    # every slot back to its pixels keeps it: demo shape 0.70-0.88 -> 0.96-0.99 (experiments/LOG.md, "Session 9")
    c.train.reconstruction_weight = 1.0

    if preset == "long":
        c.train.num_steps = 27_000
    if preset in ("scratch", "objects", "relational", "objects_lsrm"):
        c.data.caption_mix = 0.0  # question-answer pairs only (Sort-of-CLEVR's descriptions exist for no other set)
        # x/255 keeps black at 0 but turns a white background into one bright vector per empty patch that drowns
        # the position embedding (every empty token identical after pre-LN); the image's median colour is its
        # background on these sets, and subtracting it makes black, white and textured backgrounds alike
        c.model.encoders.vit.normalization = "background"
        # the paper's SiLU read left the answers blind to the image on QA pairs alone (they moved ~0.1 % when
        # the image changed); softmax over the slots made them follow it (experiments/LOG.md)
        c.model.ica.read = "softmax"
        # answer every evaluation question about another image too: whether the image is used at all is the
        # first question on a new dataset (results.json: image_control/...)
        c.eval.image_control = True
    if preset in ("objects", "relational", "objects_lsrm"):
        # experiments/LOG.md, sessions 14-28: each setting measured on set A
        c.train.reconstruction_weight = 0.0  # the slots are objects found in the pixels, not learnt patches
        # one token per object (background subtraction), read in the LLM's own sequence: count becomes exact
        c.model.injection = "prefix"
        c.model.encoders.vit.update(tokens="objects", posemb="sincos2d", distance_bias=True,
                                    # one block over the objects, starting as the identity, in which an object reads
                                    # only the other objects (so a head can prefer near ones); the LLM reads its output
                                    taps=(1,), layer_scale_init=0.0, attend="others")
        # plain scales: the demo's small ones, the learnable diagonal and the modality embedding delayed the
        # binding of colour words to their objects past every budget tried (sessions 14-15)
        c.model.projector.update(memory_scale=1.0, learnable_diagonal=False)
        c.model.modality_embedding = False
        # three blocks: in a causal reader a nearest question is three reads (the colour word finds its object,
        # that token finds the object nearest to it, the last token reads the answer there): set A 0.913 against
        # 0.800 with two, same seed (experiments/LOG.md, session 28)
        c.model.llm.update(n_kv_heads=4, n_layers=3)
        # the objects and the question read both ways (a prefix-LM), with a learned per-head bias of two objects'
        # offset in every LLM block: each object sees which one the question names and how far it is from it, as
        # the object-token probe's reader does: set A 0.998 ± 0.001 over four seeds against 0.893 ± 0.023
        # (nearest 0.98-1.00 against 0.38-0.57; experiments/LOG.md, sessions 31-32)
        c.model.update(prompt_attention="bidirectional", prefix_distance_bias=True)
        c.train.update(learning_rate=1e-3, b2=0.999, grad_clip=0.0, weight_decay=0.01, warmup_steps=200,
                       batch_size=64, num_steps=14_000,
                       # the peak rate held until the last quarter: the distance kinds are learnt after the
                       # stages, when the release's cosine has left a fifth of it or less: set A 0.893 ± 0.023
                       # over four seeds against 0.845 ± 0.063 over three (experiments/LOG.md, sessions 29-30)
                       decay_fraction=0.25,
                       # a curriculum stage's held-out loss is read at logging steps: the measured runs read it
                       # every 250; an evaluation every 2,000 shows when each kind is learnt
                       log_every=250, eval_every=2_000)
    if preset == "relational":
        # which object is where before which is nearest: shape with left / right, then up / down, then the
        # distance kinds trained beside the positional ones (placed after them, the distance kinds erased left /
        # right and up / down: 0.835 / 0.671 against 0.987 / 0.999; experiments/LOG.md, sessions 33-36)
        c.data.curriculum = ("shape+horizontal:6000:5000", "horizontal+vertical:6000:2500:0.05",
                             "horizontal+vertical+closest+furthest:10000:2500:0.05")
        # closest is learnt last, in the full stream: with 14,000 steps two seeds of three ended at 0.82 on it,
        # still rising (relational 0.922 / 0.899); with 18,000 seeds 0 / 1 / 2 give 0.992 / 0.983 / 0.977
        # (sessions 36-37)
        c.train.num_steps = 18_000
        # Sort-of-CLEVR's longest question with its answer is 19 tokens (its descriptions, 33, are not used here):
        # the LLM's rows are 8 objects + 19 rather than + 34, x0.68 the step time (benchmarks/RESULTS.md)
        c.data.max_text_len = 19
        # the LLM's pair-bias heads start with slopes on |d| from -2 (nearest first) to +2 (farthest first): closest
        # was the seed-sensitive kind (0.822-0.992 learnt from zero), learnt by 10,000 steps with them (session 42)
        c.model.prefix_distance_bias_init = 2.0
        # and each object starts reading the others, itself last: at distance 0 it was its own nearest, so the
        # nearest-first head read mostly itself (seed 2: closest 0.850, 0.895 with this; session 43)
        c.model.prefix_distance_bias_self = True
    if preset == "objects_lsrm":
        model_presets.apply(c, "ablation_lsrm")  # the memory, two levels, Λ and the mask (semrel_jax/presets.py)
        c.preset = preset
        # 30 % of the examples describe the scene: without them the positional kinds are still at 0.6 after 2,000
        # steps, with 60 % count falls to 0.28 (experiments/LOG.md, session 38)
        c.data.caption_mix = 0.3
        c.train.num_steps = 2_000
    if preset == "tiny":
        c.data.update(caption_mix=0.0, max_text_len=20)
        c.data.train_images = 200
        c.data.eval_images = 10
        c.model.llm.update(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64)
        c.model.encoders.vit.update(width=32, depth=2, heads=2, mlp_dim=64, taps=(1, 2), adapter_dim=4)
        c.model.projector.hidden = 16
        # No heatmap gallery by default: its capture pass is a second compilation, and tiny runs are for tests.
        # the plain step (the auxiliary objectives have tests of their own)
        c.train.update(batch_size=8, num_steps=6, warmup_steps=2, log_every=2, checkpoint_every=3, eval_samples=0,
                       reconstruction_weight=0.0)
        c.eval.update(batch_size=16, num_examples=40)
    return c
