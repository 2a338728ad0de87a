"""A --dtype float16 export runs under the Generator: its KV cache starts as float16 (OrtStepModel.new_cache)."""

from mxport.exporter.export import export
from mxport.runtime.generation.generate import Generator


def test_float16_export_generates(make_checkpoint, tiny_config, tmp_path):
    out = export(make_checkpoint(tiny_config), tmp_path / "f16", target="cpu", dtype="float16", progress=False)
    gen = Generator.from_folder(out)
    (g,) = gen.generate([[5, 17, 300, 42]], max_new_tokens=4, stop_token_ids=())
    assert len(g.token_ids) == 4
    assert gen.prompt_logits([[5, 17, 300]]).shape == (1, 3, tiny_config.vocab_size)
