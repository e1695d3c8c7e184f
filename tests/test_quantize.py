"""Reduced precision: int8 graphs from `export-onnx --int8 --calibrate`, run by predict / eval; the bf16 backend."""
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from conftest import NUM_CLASSES, REPO_ROOT, TINY_IMG_SIZE, TINY_KWARGS, TINY_MODEL

KWARGS = [f'{k}={v}' for k, v in TINY_KWARGS.items()]


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, '-m', 'timm_prelu', *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope='module')
def trained(digits_folder, tmp_path_factory, one_torch_thread):
    """The narrow model A trained briefly on the digits (per-channel slopes, as training leaves them), saved."""
    from safetensors.torch import save_file
    from timm_prelu.benchmark.precision import train_digits_model
    model, x_val, y_val = train_digits_model(digits_folder, TINY_KWARGS, TINY_IMG_SIZE, epochs=30)
    path = tmp_path_factory.mktemp('trained') / 'digits.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path, x_val, y_val


def cli_in_process(capsys, *args):
    """(exit code, stderr) of the command run in this process (error paths: no interpreter start-up to wait for)."""
    from timm_prelu.cli import main
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def export_args(weights, out, *extra):
    return ['export-onnx', weights, '--model', TINY_MODEL, '--model-kwargs', *KWARGS, '--num-classes', NUM_CLASSES,
            '--input-size', TINY_IMG_SIZE, '-o', out, *extra]


@pytest.fixture(scope='module')
def int8_export(trained, digits_folder, tmp_path_factory):
    """The trained model exported from the command line as int8 graphs calibrated on the train split."""
    out = tmp_path_factory.mktemp('int8')
    weights = trained[1]
    proc = cli(*export_args(weights, out / 'a.int8.onnx', '--split', '--int8', '--calibrate',
                            digits_folder / 'train', '--calibrate-count', 40, '--labels', digits_folder / 'train'))
    return out, proc.stdout


def optimized_ops(path, tmp_path):
    """Node types of ONNX Runtime's optimized graph (what it really runs on this CPU)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / 'optimized.onnx')
    opts.intra_op_num_threads = 1
    ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])
    graph = onnx.load(str(tmp_path / 'optimized.onnx')).graph
    producer = {o: n for n in graph.node for o in n.output}
    return graph, producer


def test_int8_export_writes_integer_graphs_with_metadata(int8_export):
    from timm_prelu.onnx_model.runtime import read_metadata
    out, stdout = int8_export
    assert 'on 40 image(s)' in stdout
    assert 'export: quantizing to int8, calibrated on 40 image(s)' in stdout
    assert 'parity: max |ONNX Runtime - PyTorch| of the float graphs quantized on a random batch: model ' in stdout
    for name in ('a.int8.onnx', 'a.int8.backbone.onnx', 'a.int8.head.onnx'):
        info = read_metadata(out / name)
        assert info['precision'] == 'int8' and info['dtype'] == 'int8'
        assert info['calibration_count'] == 40
        graph = onnx.load(str(out / name)).graph
        ops = Counter(n.op_type for n in graph.node)
        assert ops['QuantizeLinear'] > 0 and ops['DequantizeLinear'] > 0
        init = {i.name: i for i in graph.initializer}
        producer = {o: n for n in graph.node for o in n.output}
        layers = [n for n in graph.node if n.op_type in ('Conv', 'Gemm')]
        assert layers
        for layer in layers:  # every conv / fc weight is stored as int8 and dequantized per output channel
            dq = producer[layer.input[1]]
            assert dq.op_type == 'DequantizeLinear' and init[dq.input[0]].data_type == onnx.TensorProto.INT8
            assert len(init[dq.input[1]].dims) == 1 and init[dq.input[1]].dims[0] > 1
    assert not [p for p in out.iterdir() if p.name.startswith('.')]  # no temp file left behind


def test_ort_runs_convolutions_and_fc_layers_in_int8(int8_export, tmp_path):
    out, _ = int8_export
    graph, _ = optimized_ops(out / 'a.int8.onnx', tmp_path)
    ops = Counter(n.op_type for n in graph.node)
    assert ops['QLinearConv'] >= 14  # all but possibly the 3-channel stem
    assert ops['QGemm'] == 3  # fc1, fc2, fc3
    assert ops['Gemm'] == 0


def test_single_slope_prelus_leave_no_dequantize_quantize_pair(digits_folder, tmp_path):
    """A freshly built net has one slope value per layer: its PReLUs become int8 LeakyRelu, not float islands."""
    from timm_prelu.onnx_model.quantize import export_int8
    torch.manual_seed(0)
    path = export_int8(TINY_MODEL, tmp_path / 'fresh.int8.onnx', digits_folder / 'val', 8, verify=False,
                       model_kwargs=dict(TINY_KWARGS), num_classes=NUM_CLASSES, input_size=TINY_IMG_SIZE).model
    graph, producer = optimized_ops(path, tmp_path)
    ops = Counter(n.op_type for n in graph.node)
    assert ops['PRelu'] == 0
    assert ops['QLinearLeakyRelu'] >= 17
    # the rectifier in front of the SPP may stay float: its output takes the SPP concat's int8 scale, which
    # ONNX Runtime cannot fuse with the unsigned input of the last conv; every other one runs in int8
    float_acts = [n for n in graph.node if n.op_type in ('PRelu', 'LeakyRelu')
                  and n.input[0] in producer and producer[n.input[0]].op_type == 'DequantizeLinear']
    assert len(float_acts) <= 1 and ops['LeakyRelu'] <= 1


def test_leaky_relu_rewrite_is_exact_and_leaves_channel_wise_slopes():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from timm_prelu.onnx_model.quantize import prelu_as_leaky_relu

    def graph(slope):
        node = helper.make_node('PRelu', ['x', 's'], ['y'])
        g = helper.make_graph([node], 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 3, 4, 4])],
                              [numpy_helper.from_array(slope, 's')])
        return helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])

    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    shared = np.full((3, 1, 1), 0.1234567, np.float32)
    model = graph(shared)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {'x': x})[0]
    assert prelu_as_leaky_relu(model) == 1 and model.graph.node[0].op_type == 'LeakyRelu'
    after = ort.InferenceSession(model.SerializeToString()).run(None, {'x': x})[0]
    np.testing.assert_array_equal(before, after)
    channel_wise = graph(np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1))
    assert prelu_as_leaky_relu(channel_wise) == 0 and channel_wise.graph.node[0].op_type == 'PRelu'


def test_int8_top1_agrees_with_float32(int8_export, trained):
    from timm_prelu.onnx_model.runtime import OnnxModel
    out, _ = int8_export
    model, _, x_val, y_val = trained
    with torch.no_grad():
        fp32 = model(torch.from_numpy(x_val)).argmax(1).numpy()
    int8 = OnnxModel(out / 'a.int8.onnx', providers='cpu').run(x_val).argmax(1)
    # Measured over training seeds 0-5 (1 thread, AMD EPYC): fp32 top-1 0.79-0.91, int8 / fp32 agreement 0.978-1.0.
    # The int8 graph of another (untrained) model agrees 0.12 of the time: the bound catches a graph that lost the
    # weights' information.
    assert (fp32 == y_val).mean() > 0.5  # the model learned something: agreement below means something
    assert (int8 == fp32).mean() >= 0.85


def test_predict_and_eval_run_the_int8_graphs(int8_export, digits_folder, tmp_path):
    out, _ = int8_export
    proc = cli('predict', digits_folder / 'val' / '3', '--onnx', out / 'a.int8.onnx', '--scales', 32, 40,
               '--views', 'dense', 'full', '--topk', 1)
    assert 'image(s) predicted, 0 skipped' in proc.stdout
    proc = cli('eval', '--data', digits_folder / 'val', '--onnx', out / 'a.int8.onnx', '--scales', 32,
               '--views', 'full', '--no-progress', '--out', tmp_path / 'eval')
    assert (tmp_path / 'eval' / 'table.md').is_file()


@pytest.mark.parametrize('kind', ['missing', 'empty', 'not_images', 'corrupt', 'file'])
def test_bad_calibration_folder_is_one_line_naming_the_flag(kind, tmp_path, capsys):
    folder = tmp_path / 'calib'
    if kind != 'missing':
        folder.mkdir()
    if kind == 'not_images':
        (folder / 'notes.txt').write_text('not an image')
        (folder / 'sub').mkdir()
        (folder / 'sub' / 'data.csv').write_text('1,2')
    if kind == 'corrupt':
        (folder / 'a.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
    if kind == 'file':
        folder.rmdir()
        folder.write_text('x')
    out = tmp_path / 'a.int8.onnx'
    code, err = cli_in_process(capsys, *export_args(TINY_MODEL, out, '--int8', '--calibrate', folder))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('timm-prelu export-onnx: error: --calibrate: '), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith('.a.int8')]


def test_int8_flags_are_checked_together(tmp_path, capsys):
    code, err = cli_in_process(capsys, *export_args(TINY_MODEL, tmp_path / 'a.onnx', '--int8'))
    assert code == 2 and 'error: --calibrate:' in err
    code, err = cli_in_process(capsys, *export_args(TINY_MODEL, tmp_path / 'a.onnx', '--calibrate', tmp_path))
    assert code == 2 and 'add --int8' in err
    assert not (tmp_path / 'a.onnx').exists()


def test_bf16_backend_scores_close_to_float32(trained, digits_folder):
    from timm_prelu.inference.precision import TorchBf16Backend, bf16_note, native_bf16
    from timm_prelu.inference.predictor import MultiScalePredictor, TorchBackend, softmax
    model, _, x_val, _ = trained
    fp32 = TorchBackend(model, device='cpu')
    bf16 = TorchBf16Backend(model, device='cpu')
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert next(fp32.model.parameters()).dtype == torch.float32  # the caller's model is left as it was
    p32, p16 = softmax(fp32.logits(x_val[:32])), softmax(bf16.logits(x_val[:32]))
    assert p16.dtype == np.float32
    # Measured over training seeds 0-5 (1 thread, AMD EPYC with AVX512-BF16): max |p32 - p16| 0.0033-0.0094, argmax
    # agreement 1.0 at every seed; the bounds leave 5x and 10 points of margin for other CPUs' bf16 kernels.
    assert np.abs(p32 - p16).max() < 0.05
    assert (p32.argmax(1) == p16.argmax(1)).mean() >= 0.9
    assert (bf16_note() in bf16.notes) == (not native_bf16())
    pred = MultiScalePredictor(bf16, scales=(32, 40), views=('dense', 'full'))  # dense windows run in bf16 too
    from PIL import Image
    image = Image.open(next((digits_folder / 'val' / '3').iterdir())).convert('RGB')
    assert abs(pred.predict(image).sum() - 1) < 1e-4


def test_predict_precision_bf16_from_the_command_line(trained, digits_folder):
    _, weights, _, _ = trained
    proc = cli('predict', digits_folder / 'val' / '3', '--model', TINY_MODEL, '--checkpoint', weights,
               '--model-kwargs', *KWARGS, '--num-classes', NUM_CLASSES, '--precision', 'bf16', '--scales', 32,
               '--views', 'full', '--device', 'cpu')
    assert 'bfloat16' in proc.stdout and 'image(s) predicted, 0 skipped' in proc.stdout

def test_precision_bf16_is_refused_for_an_onnx_file(int8_export, digits_folder, capsys):
    out, _ = int8_export
    code, err = cli_in_process(capsys, 'predict', digits_folder / 'val' / '3', '--onnx', out / 'a.int8.onnx',
                               '--precision', 'bf16')
    assert code == 2 and err.count('\n') == 1 and 'error: --precision:' in err
