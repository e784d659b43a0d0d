"""The profile reader of experiments/profile_step.py: a real CPU trace, a GPU-shaped one, names."""

import jax
import jax.numpy as jnp
import pytest

from experiments import profile_step as ps


def _step(x, w, m):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = jnp.tanh(y)
  mean = y.mean(axis=(0, 1, 2))  # a BatchNorm-like reduction
  return (y - mean).reshape(x.shape[0], -1) @ m


def test_cpu_trace_of_a_jitted_step(tmp_path):
  x = jnp.ones((4, 16, 16, 8))
  w = jnp.ones((3, 3, 8, 8)) * 0.01
  m = jnp.ones((16 * 16 * 8, 32)) * 0.01
  f = jax.jit(_step)
  jax.block_until_ready(f(x, w, m))
  trace, wall = ps.profile(lambda: f(x, w, m), 2, str(tmp_path))
  assert ps.find_trace_file(str(tmp_path)).endswith(".trace.json.gz")
  s = ps.summarize(trace, 2, top=10, hlo_text=f.lower(x, w, m).compile().as_text())
  assert wall > 0 and s["step_ms"] > 0 and s["kernel_ms_per_step"] > 0
  assert s["kernels"] and s["hlo_ops"] and s["source_ops"]
  assert s["events_matched_to_hlo"] > 0
  for table in ("kernels", "hlo_ops", "source_ops", "categories"):
    for r in s[table]:
      assert 0 <= r["percent_of_step"] <= 100 + 1e-6, (table, r)
  # Each busy instant is in some kernel's self time: kernels + idle cover the step.
  total = sum(r["percent_of_step"] for r in s["categories"])
  assert 99 <= total <= 100 * 8, s["categories"]
  cats = {r["category"] for r in s["categories"]}
  assert any(c.startswith("conv") for c in cats), cats
  text = ps.format_tables(s)
  assert "top kernels" in text and "category" in text


def test_gpu_shaped_trace_takes_the_stream_lines():
  meta = [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Kernel)"}},
      {"ph": "M", "pid": 2, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
      {"ph": "M", "pid": 2, "tid": 9, "name": "thread_name", "args": {"name": "XLA Modules"}},
  ]
  kernels = []
  for step in range(2):
    t0 = 1000.0 * step
    kernels += [
        {"ph": "X", "pid": 2, "tid": 7, "ts": t0, "dur": 600.0,
         "name": "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc",
         "args": {"hlo_op": "cudnn-conv.1"}},
        {"ph": "X", "pid": 2, "tid": 7, "ts": t0 + 600, "dur": 300.0,
         "name": "input_reduce_fusion_3", "args": {"hlo_op": "input_reduce_fusion.3"}},
        {"ph": "X", "pid": 2, "tid": 8, "ts": t0, "dur": 900.0, "name": "fusion.1"},
        {"ph": "X", "pid": 2, "tid": 9, "ts": t0, "dur": 1000.0, "name": "jit__fun"},
        {"ph": "X", "pid": 1, "tid": 1, "ts": t0, "dur": 5000.0, "name": "PjitFunction"},
    ]
  s = ps.summarize({"traceEvents": meta + kernels}, steps=2)
  assert s["source"].startswith("device processes (stream lines")
  assert s["events"] == 4
  assert s["step_ms"] == pytest.approx(1.9 / 2)  # span 0..1900 us over 2 steps
  by_cat = {r["category"]: r for r in s["categories"]}
  assert by_cat["conv fwd"]["ms_per_step"] == pytest.approx(0.6)
  assert by_cat["reduction"]["ms_per_step"] == pytest.approx(0.3)
  assert s["kernels"][0]["kernel"].startswith("sm90_xmma_fprop")
  assert s["kernels"][1]["kernel"] == "input_reduce_fusion"
  assert s["kernels"][1]["count"] == 1


@pytest.mark.parametrize("name,hlo_op,want", [
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize", "", "conv fwd"),
    ("sm90_xmma_dgrad_implicit_gemm_indexed_bf16bf16", "", "conv bwd-input"),
    ("sm80_xmma_wgrad_implicit_gemm_indexed_bf16bf16", "", "conv bwd-filter"),
    ("cutlass_kernel", "cudnn-conv-bw-filter.2", "conv bwd-filter"),
    ("loop_reduce_fusion", "", "reduction"),
    ("input_reduce_fusion_12", "", "reduction"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "", "collective"),
    ("all-reduce.3", "", "collective"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "", "gemm"),
    ("triton_gemm_dot_fusion", "", "gemm"),
    ("loop_convert_fusion", "", "fusion/elementwise"),  # 'convert' is not a conv
    ("loop_multiply_fusion_4", "", "fusion/elementwise"),
    ("MemcpyD2D", "", "copy/transpose"),
    ("nchwToNhwcKernel", "", "copy/transpose"),
    ("input_transpose_fusion", "", "copy/transpose"),
    ("mystery_kernel", "", "other"),
])
def test_category_of_names(name, hlo_op, want):
  assert ps.category(name, hlo_op) == want


def test_category_from_the_hlo():
  hlo = """HloModule jit_f, is_scheduled=true

%fused_dot (p0: f32[4,8], p1: f32[8,2]) -> f32[4,2] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_move (p0: f32[4,8]) -> f32[8,4] {
  %p0 = f32[4,8]{1,0} parameter(0)
  ROOT %transpose.1 = f32[8,4]{0,1} transpose(%p0), dimensions={1,0}
}

ENTRY %main (a: f32[4,8], b: f32[8,2]) -> (f32[4,2], f32[8,4]) {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %ynn_fusion.3 = f32[4,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(f)/jvp(Dec)/dense/dot_general"}
  %my_fusion = f32[8,4]{0,1} fusion(%a), kind=kLoop, calls=%fused_move
  %cc = f32[4,2]{1,0} custom-call(%a, %b), custom_call_target="__cudnn$convBackwardFilter", metadata={op_name="jit(f)/transpose(jvp(Dec))/conv/conv_general_dilated"}
  ROOT %t = (f32[4,2]{1,0}, f32[8,4]{0,1}) tuple(%ynn_fusion.3, %my_fusion)
}
"""
  module, infos = ps.parse_hlo(hlo)
  assert module == "jit_f"
  assert "dot" in infos["ynn_fusion.3"].opcodes
  assert infos["ynn_fusion.3"].op_name == "jvp(Dec)/dense/dot_general"
  assert ps.category("ynn_fusion", "ynn_fusion.3", infos["ynn_fusion.3"]) == "gemm"
  assert ps.category("my_fusion", "my_fusion", infos["my_fusion"]) == "copy/transpose"
  assert ps.category("some_kernel", "cc", infos["cc"]) == "conv bwd-filter"
  assert ps.base_name("loop_add_fusion_12") == "loop_add_fusion"
  assert ps.base_name("%fusion.3.1") == "fusion"


def test_self_times_remove_nested_events():
  events = [{"pid": 1, "tid": 1, "ts": 0.0, "dur": 10.0},   # while
            {"pid": 1, "tid": 1, "ts": 1.0, "dur": 3.0},    # body op
            {"pid": 1, "tid": 1, "ts": 5.0, "dur": 4.0},    # body op
            {"pid": 1, "tid": 2, "ts": 2.0, "dur": 5.0}]    # another thread
  assert ps.self_times(events) == [3.0, 3.0, 4.0, 5.0]
