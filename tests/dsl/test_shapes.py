"""Shape propagation against hand-computed shapes and Keras parameter counts.

Every expected number carries its arithmetic. Shapes are per example (no batch dim),
channels last; parameter counts are trainable parameters as Keras counts them.
"""

from __future__ import annotations

import pytest
from neural_dsl import Diagnostic, DSLError, ShapeReport, check

Shape = tuple[int | None, ...]

# The first layer line of `program(...)` is line 4; every layer line starts at column 5.
FIRST_LINE, COLUMN = 4, 5


def program(input_shape: str, *layers: str) -> str:
    body = "\n".join(f"    {line}" for line in layers)
    return f"network T {{\n  input: {input_shape}\n  layers:\n{body}\n}}\n"


def report(input_shape: str, *layers: str) -> ShapeReport:
    return check(program(input_shape, *layers)).shapes["T"]


def shape_error(input_shape: str, *layers: str) -> Diagnostic:
    with pytest.raises(DSLError) as info:
        check(program(input_shape, *layers))
    d = info.value.first
    assert d.stage == "shape", d
    return d


def _case(input_shape: str, layer: str, shape: Shape, params: int) -> object:
    return pytest.param(input_shape, layer, shape, params, id=f"{layer}@{input_shape}")


# (input, layer, expected output shape, expected trainable params)
SINGLE_LAYER_CASES = [
    # ------------------------------------------------------------------ core
    _case("(784)", 'Dense(128, "relu")', (128,), 100480),  # 784*128 + 128
    _case("(10, 16)", "Dense(4)", (10, 4), 68),  # on the last axis: 16*4 + 4
    _case("(16)", "Dense(4, use_bias=false)", (4,), 64),  # 16*4
    _case("(128)", 'Output(10, "softmax")', (10,), 1290),  # 128*10 + 10
    _case("(10, 16)", "Dropout(0.5)", (10, 16), 0),
    _case("(5, 5, 32)", "Flatten()", (800,), 0),  # 5*5*32 = 800
    _case("(8, 8, 3)", 'Activation("relu")', (8, 8, 3), 0),
    _case("(24)", "Reshape((4, 6))", (4, 6), 0),  # 24 = 4*6
    _case("(6, 4)", "Reshape((2, 3, 4))", (2, 3, 4), 0),  # 6*4 = 24 = 2*3*4
    _case("(12)", "GaussianNoise(0.1)", (12,), 0),
    _case("(10, 16)", 'CustomShape("MyLayer", (7, 3))', (7, 3), 0),
    # ------------------------------------------------------------------ conv
    # valid: (28 - 3)//1 + 1 = 26; 3*3*1*32 + 32 = 320
    _case("(28, 28, 1)", 'Conv2D(32, (3,3), "relu")', (26, 26, 32), 320),
    # same, stride 1: 28; 3*3*3*16 + 16 = 432 + 16 = 448
    _case("(28, 28, 3)", 'Conv2D(16, (3,3), padding="same")', (28, 28, 16), 448),
    # same, stride 2: ceil(28/2) = 14; 448 as above
    _case("(28, 28, 3)", 'Conv2D(16, (3,3), strides=2, padding="same")', (14, 14, 16), 448),
    # valid, stride 2: (28 - 3)//2 + 1 = 12 + 1 = 13; 448 as above
    _case("(28, 28, 3)", "Conv2D(16, (3,3), strides=2)", (13, 13, 16), 448),
    # (10 - 3)//1 + 1 = 8, (12 - 5)//2 + 1 = 4; 3*5*2*4 + 4 = 120 + 4 = 124
    _case("(10, 12, 2)", "Conv2D(4, (3,5), strides=(1,2))", (8, 4, 4), 124),
    # dilation 2: span 2*(3-1) + 1 = 5, 10 - 5 + 1 = 6; 3*3*2*8 + 8 = 144 + 8 = 152
    _case("(10, 10, 2)", "Conv2D(8, (3,3), dilation_rate=2)", (6, 6, 8), 152),
    # same with dilation keeps 10; 152 as above
    _case("(10, 10, 2)", 'Conv2D(8, 3, padding="same", dilation_rate=2)', (10, 10, 8), 152),
    # 9 - 3 + 1 = 7; 3*3*2*8 = 144 (no bias)
    _case("(9, 9, 2)", "Conv2D(8, 3, use_bias=false)", (7, 7, 8), 144),
    # 100 - 3 + 1 = 98; 3*8*16 + 16 = 384 + 16 = 400
    _case("(100, 8)", "Conv1D(16, 3)", (98, 16), 400),
    # (100 - 5)//2 + 1 = 47 + 1 = 48; 5*8*16 + 16 = 640 + 16 = 656
    _case("(100, 8)", "Conv1D(16, 5, strides=2)", (48, 16), 656),
    # causal keeps the length: ceil(100/1) = 100; 3*8*16 + 16 = 400
    _case("(100, 8)", 'Conv1D(16, 3, padding="causal", dilation_rate=4)', (100, 16), 400),
    # (8-3+1, 16-3+1, 16-3+1) = (6, 14, 14); 3*3*3*2*4 + 4 = 216 + 4 = 220
    _case("(8, 16, 16, 2)", "Conv3D(4, (3,3,3))", (6, 14, 14, 4), 220),
    # same, stride 2: (ceil(8/2), ceil(16/2), ceil(16/2)) = (4, 8, 8); 220 as above
    _case("(8, 16, 16, 2)", 'Conv3D(4, 3, strides=2, padding="same")', (4, 8, 8, 4), 220),
    # Keras deconv_output_length, valid: 7*2 + max(3 - 2, 0) = 15; 3*3*8*16 + 8 = 1152 + 8
    _case("(7, 7, 16)", "Conv2DTranspose(8, (3,3), strides=2)", (15, 15, 8), 1160),
    # same: 7*2 = 14; 1160 as above
    _case("(7, 7, 16)", 'Conv2DTranspose(8, (3,3), strides=2, padding="same")', (14, 14, 8), 1160),
    # valid, stride 1: 5*1 + max(3 - 1, 0) = 7; 3*3*4*1 + 4 = 40
    _case("(5, 5, 1)", "Conv2DTranspose(4, (3,3))", (7, 7, 4), 40),
    # kernel smaller than stride: 7*2 + max(1 - 2, 0) = 14 (not (7-1)*2 + 1 = 13);
    # 1*1*4*3 + 4 = 16
    _case("(7, 7, 3)", "Conv2DTranspose(4, (1,1), strides=2)", (14, 14, 4), 16),
    # dilated kernel 3 + (3-1)*(2-1) = 5: 5*1 + max(5 - 1, 0) = 9; 3*3*4*1 + 4 = 40
    _case("(5, 5, 1)", "Conv2DTranspose(4, (3,3), dilation_rate=2)", (9, 9, 4), 40),
    # 16 - 3 + 1 = 14; depthwise 3*3*8*1 + pointwise 8*32 + bias 32 = 72 + 256 + 32 = 360
    _case("(16, 16, 8)", "SeparableConv2D(32, (3,3))", (14, 14, 32), 360),
    # depthwise 3*3*8*2 + pointwise 8*2*32 + bias 32 = 144 + 512 + 32 = 688
    _case(
        "(16, 16, 8)",
        'SeparableConv2D(32, (3,3), padding="same", depth_multiplier=2)',
        (16, 16, 32),
        688,
    ),
    # 16 - 3 + 1 = 14; 3*3*8 + 8 = 72 + 8 = 80
    _case("(16, 16, 8)", "DepthwiseConv2D((3,3))", (14, 14, 8), 80),
    # ceil(16/2) = 8, channels 8*2 = 16; 3*3*8*2 + 16 = 144 + 16 = 160
    _case("(16, 16, 8)", 'DepthwiseConv2D((3,3), 2, "same", depth_multiplier=2)', (8, 8, 16), 160),
    # --------------------------------------------------------------- pooling
    _case("(26, 26, 32)", "MaxPooling2D((2,2))", (13, 13, 32), 0),  # 26//2 = 13
    _case("(13, 13, 8)", "MaxPooling2D((3,3), strides=2)", (6, 6, 8), 0),  # (13-3)//2 + 1 = 6
    _case("(7, 7, 4)", 'MaxPooling2D((2,2), padding="same")', (4, 4, 4), 0),  # ceil(7/2) = 4
    _case("(9, 9, 3)", "AveragePooling2D((2,2))", (4, 4, 3), 0),  # (9-2)//2 + 1 = 4
    _case("(9, 9, 3)", "AveragePooling2D(3, 1)", (7, 7, 3), 0),  # (9-3)//1 + 1 = 7
    _case("(9, 4)", "MaxPooling1D(2)", (4, 4), 0),  # (9-2)//2 + 1 = 4
    _case("(10, 4)", 'AveragePooling1D(3, 2, "same")', (5, 4), 0),  # ceil(10/2) = 5
    _case("(8, 8, 8, 3)", "MaxPooling3D((2,2,2))", (4, 4, 4, 3), 0),  # 8//2 = 4
    _case("(9, 8, 8, 3)", "MaxPooling3D(3, 2)", (4, 3, 3, 3), 0),  # (9-3)//2+1=4, (8-3)//2+1=3
    _case("(5, 5, 5, 2)", 'AveragePooling3D((2,2,2), padding="same")', (3, 3, 3, 2), 0),
    _case("(10, 4)", "GlobalMaxPooling1D()", (4,), 0),
    _case("(10, 4)", "GlobalAveragePooling1D(keepdims=true)", (1, 4), 0),
    _case("(7, 7, 64)", "GlobalAveragePooling2D()", (64,), 0),
    _case("(7, 7, 64)", "GlobalMaxPooling2D(keepdims=true)", (1, 1, 64), 0),
    _case("(4, 4, 4, 8)", "GlobalMaxPooling3D()", (8,), 0),
    _case("(4, 4, 4, 8)", "GlobalAveragePooling3D(keepdims=true)", (1, 1, 1, 8), 0),
    # ------------------------------------------------------------- recurrent
    _case("(10, 8)", "SimpleRNN(16)", (16,), 400),  # 16*(8+16) + 16 = 384 + 16
    _case("(10, 8)", "SimpleRNN(16, return_sequences=true)", (10, 16), 400),  # as above
    _case("(10, 8)", "SimpleRNNDropoutWrapper(16, dropout=0.2)", (16,), 400),  # as SimpleRNN
    _case("(10, 8)", "LSTM(32)", (32,), 5248),  # 4*(32*(8+32) + 32) = 4*1312
    _case("(10, 8)", "LSTM(32, return_sequences=true)", (10, 32), 5248),  # as above
    # reset_after=True: two biases per gate: 3*(32*(8+32) + 32 + 32) = 3*1344
    _case("(10, 8)", "GRU(32)", (32,), 4032),
    _case("(10, 8)", "GRU(32, return_sequences=true)", (10, 32), 4032),  # as above
    _case("(10, 8)", "GRU(32, use_bias=false)", (32,), 3840),  # 3*32*(8+32) = 3*1280
    _case("(8)", "SimpleRNNCell(16)", (16,), 400),  # 16*(8+16) + 16
    _case("(8)", "LSTMCell(32)", (32,), 5248),  # 4*(32*(8+32) + 32)
    _case("(8)", "GRUCell(32)", (32,), 4032),  # 3*(32*(8+32) + 2*32)
    # 2 directions * 4*(16*(8+16) + 16) = 2*1600; concat: 16 + 16 = 32 features
    _case("(10, 8)", "Bidirectional(LSTM(16, return_sequences=true))", (10, 32), 3200),
    # sum keeps 16 features; 2*1600
    _case("(10, 8)", 'Bidirectional(LSTM(16), "sum")', (16,), 3200),
    # 2 * 3*(8*(8+8) + 8 + 8) = 2*432 = 864; concat: 8 + 8 = 16
    _case("(10, 8)", 'Bidirectional(GRU(8), merge_mode="concat")', (16,), 864),
    _case("(10, 8)", "TimeDistributed(Dense(4))", (10, 4), 36),  # 8*4 + 4 per step, shared
    # per frame (8-3+1, 8-3+1) = (6, 6); 3*3*1*4 + 4 = 40
    _case("(5, 8, 8, 1)", "TimeDistributed(Conv2D(4, (3,3)))", (5, 6, 6, 4), 40),
    # --------------------------------------------------- attention / transformer
    _case("(10, 16)", "Attention()", (10, 16), 0),
    _case("(10, 16)", "Attention(use_scale=true)", (10, 16), 1),  # one scalar scale
    # q, k, v: 3*(16*(4*8) + 4*8) = 3*544 = 1632; output: (4*8)*16 + 16 = 528; 1632 + 528
    _case("(10, 16)", "MultiHeadAttention(4, 8)", (10, 16), 2160),
    # key_dim = 16/2 = 8, 2*8 = 16: 3*(16*16 + 16) + 16*16 + 16 = 816 + 272
    _case("(10, 16)", "MultiHeadAttention(num_heads=2)", (10, 16), 1088),
    # attention 4*16*16 + 4*16 = 1088; feed-forward 16*32 + 32 + 32*16 + 16 = 544 + 528 = 1072;
    # two LayerNorms 2*(2*16) = 64; 1088 + 1072 + 64 = 2224
    _case("(10, 16)", "TransformerEncoder(2, 32)", (10, 16), 2224),
    _case("(10, 16)", "TransformerDecoder(2, 32)", (10, 16), 2224),  # causal; same weights
    # 2 heads * (W 16*8 + attention vector 2*8) = 2*144 = 288; heads concatenated: 2*8
    _case("(5, 16)", "GraphAttention(2, 8)", (5, 16), 288),
    # units default to the features, 16: 2*(16*16 + 2*16) = 2*288 = 576; 2*16 = 32
    _case("(5, 16)", "GraphAttention(2)", (5, 32), 576),
    # bottleneck 16//4 = 4: Dense(4) 16*4 + 4 = 68, Dense(16) 4*16 + 16 = 80; 68 + 80
    _case("(8, 8, 16)", "SqueezeExcitation(4)", (8, 8, 16), 148),
    # ratio 16: bottleneck max(1, 16//16) = 1: 16*1 + 1 + 1*16 + 16 = 17 + 32
    _case("(8, 8, 16)", "SqueezeExcitation()", (8, 8, 16), 49),
    # --------------------------------------------------------- normalization
    _case("(8, 8, 16)", "BatchNormalization()", (8, 8, 16), 32),  # gamma + beta: 2*16
    _case("(10)", "BatchNormalization(center=false)", (10,), 10),  # gamma only: 1*10
    _case("(10, 16)", "LayerNormalization()", (10, 16), 32),  # 2*16
    _case("(8, 8, 16)", "InstanceNormalization()", (8, 8, 16), 32),  # 2*16
    _case("(8, 8, 16)", "GroupNormalization(4)", (8, 8, 16), 32),  # 16 % 4 == 0; 2*16
    _case("(4, 4, 64)", "GroupNormalization()", (4, 4, 64), 128),  # 32 groups; 2*64
    # ------------------------------------------------------------- embedding
    _case("(20)", "Embedding(1000, 64)", (20, 64), 64000),  # 1000*64
    # ------------------------------------------------------- other structures
    # 1x1: 4*16 + 16 = 80; 3x3: 3*3*4*32 + 32 = 1184; 5x5: 5*5*4*8 + 8 = 808;
    # pool projection: 4*8 + 8 = 40; 80 + 1184 + 808 + 40 = 2112; channels 16+32+8+8 = 64
    _case(
        "(8, 8, 4)",
        "Inception(filters_1x1=16, filters_3x3=32, filters_5x5=8, filters_pool=8)",
        (8, 8, 64),
        2112,
    ),
    # defaults 64/128/32/32: 4*64+64 = 320, 9*4*128+128 = 4736, 25*4*32+32 = 3232,
    # 4*32+32 = 160; 320 + 4736 + 3232 + 160 = 8448; channels 64+128+32+32 = 256
    _case("(8, 8, 4)", "Inception()", (8, 8, 256), 8448),
    # W: in_caps*num_caps*dim_in*dim_caps = 32*10*8*16 = 40960
    _case("(32, 8)", "CapsuleLayer(10, 16)", (10, 16), 40960),
    _case("(4)", "QuantumLayer(4, 2)", (4,), 24),  # 2 layers * 4 qubits * 3 angles
    _case("(4)", "QuantumLayer()", (4,), 12),  # 1 * 4 * 3
]


@pytest.mark.parametrize(("input_shape", "layer", "shape", "params"), SINGLE_LAYER_CASES)
def test_single_layer_shape_and_params(
    input_shape: str, layer: str, shape: Shape, params: int
) -> None:
    rep = report(input_shape, layer)
    (lay,) = rep.layers
    assert (lay.output_shape, lay.params) == (shape, params)
    assert (rep.output_shape, rep.total_params) == (shape, params)


def test_a_whole_network_and_its_json() -> None:
    rep = report(
        "(28, 28, 1)",
        'Conv2D(32, (3,3), "relu")',
        "MaxPooling2D((2,2))",
        "Flatten()",
        'Dense(128, "relu")',
        'Output(10, "softmax")',
    )
    assert [(lay.name, lay.output_shape, lay.params) for lay in rep.layers] == [
        ("conv2d_1", (26, 26, 32), 320),  # 3*3*1*32 + 32
        ("max_pooling2d_1", (13, 13, 32), 0),  # 26//2
        ("flatten_1", (5408,), 0),  # 13*13*32
        ("dense_1", (128,), 692352),  # 5408*128 + 128
        ("output_1", (10,), 1290),  # 128*10 + 10
    ]
    assert rep.total_params == 693962  # 320 + 692352 + 1290
    data = rep.to_json()
    assert data["inputs"] == {"input": [None, 28, 28, 1]}
    assert [lay["output_shape"] for lay in data["layers"]] == [
        [None, 26, 26, 32],
        [None, 13, 13, 32],
        [None, 5408],
        [None, 128],
        [None, 10],
    ]
    assert data["output_shape"] == [None, 10]
    assert data["total_params"] == 693962


def test_a_leading_none_is_the_batch_dimension() -> None:
    batched = report("(None, 28, 28, 1)", "Conv2D(32, (3,3))")
    plain = report("(28, 28, 1)", "Conv2D(32, (3,3))")
    assert batched.inputs == (("input", (28, 28, 1)),)
    assert batched.layers == plain.layers
    assert batched.layers[0].output_shape == (26, 26, 32)  # 28 - 3 + 1
    assert batched.layers[0].params == 320  # 3*3*1*32 + 32
    assert batched.to_json()["output_shape"] == [None, 26, 26, 32]


def test_a_none_step_dimension_propagates_as_none() -> None:
    # (None, None, 8): batch, then an unknown number of steps of 8 features.
    rep = report(
        "(None, None, 8)",
        "LSTM(16, return_sequences=true)",
        "Conv1D(4, 3)",
        "GlobalMaxPooling1D()",
        "Dense(2)",
    )
    assert [(lay.output_shape, lay.params) for lay in rep.layers] == [
        ((None, 16), 1600),  # 4*(16*(8+16) + 16); weights do not depend on the steps
        ((None, 4), 196),  # 3*16*4 + 4
        ((4,), 0),
        ((2,), 10),  # 4*2 + 2
    ]
    assert rep.total_params == 1806  # 1600 + 196 + 0 + 10
    assert rep.to_json()["layers"][0]["output_shape"] == [None, None, 16]


def test_an_unknown_dimension_makes_dependent_params_unknown() -> None:
    flat = report("(None, None, 8)", "Flatten()", "Dense(2)")
    assert [(lay.output_shape, lay.params) for lay in flat.layers] == [
        ((None,), 0),  # None*8 is unknown
        ((2,), None),  # None*2 + 2
    ]
    assert flat.total_params is None
    channels = report("(10, None)", "Dense(4)")
    assert (channels.layers[0].output_shape, channels.layers[0].params) == ((10, 4), None)


def test_an_hpo_value_makes_the_dependent_dim_and_params_unknown() -> None:
    rep = report("(16)", "Dense(HPO(choice(32, 64)))", "Dropout(0.5)", "Dense(10)")
    assert [(lay.output_shape, lay.params) for lay in rep.layers] == [
        ((None,), None),  # 16*units + units, units unknown
        ((None,), 0),
        ((10,), None),  # units*10 + 10
    ]
    assert rep.output_shape == (10,)
    assert rep.total_params is None
    conv = report("(8, 8, 1)", "Conv2D(HPO(choice(8, 16)), (3,3))", "MaxPooling2D((2,2))")
    assert [(lay.output_shape, lay.params) for lay in conv.layers] == [
        ((6, 6, None), None),  # 8 - 3 + 1 = 6; filters unknown
        ((3, 3, None), 0),  # 6//2 = 3
    ]


def test_repetition_gives_distinct_layers() -> None:
    rep = report("(4)", 'Dense(8, "relu") * 3')
    assert [(lay.name, lay.output_shape, lay.params) for lay in rep.layers] == [
        ("dense_1", (8,), 40),  # 4*8 + 8
        ("dense_2", (8,), 72),  # 8*8 + 8
        ("dense_3", (8,), 72),  # 8*8 + 8
    ]
    assert rep.total_params == 184  # 40 + 72 + 72


def test_transformer_encoder_with_a_block_replacing_its_feed_forward() -> None:
    rep = report("(10, 16)", 'TransformerEncoder(2, 32) { Dense(64, "relu") Dense(16) }')
    (enc,) = rep.layers
    assert [(s.output_shape, s.params) for s in enc.sublayers] == [
        ((10, 64), 1088),  # 16*64 + 64
        ((10, 16), 1040),  # 64*16 + 16
    ]
    # attention 4*16*16 + 4*16 = 1088; norms 2*(2*16) = 64; block 1088 + 1040 = 2128
    assert (enc.output_shape, enc.params) == ((10, 16), 3280)  # 1088 + 64 + 2128


def test_residual_identity_shortcut() -> None:
    rep = report("(16, 16, 8)", 'ResidualConnection { Conv2D(8, (3,3), padding="same") }')
    (res,) = rep.layers
    assert res.type == "ResidualConnection"
    assert [s.name for s in res.sublayers] == ["residual_connection_1/conv2d_1"]
    # identity shortcut, no extra weights: 3*3*8*8 + 8 = 576 + 8 = 584
    assert (res.output_shape, res.params) == ((16, 16, 8), 584)


@pytest.mark.parametrize(
    ("input_shape", "block", "shape", "params"),
    [
        # block: ceil(16/2) = 8, 3*3*8*16 + 16 = 1168; 1x1 stride-2 projection 8*16 + 16 = 144
        ("(16, 16, 8)", 'Conv2D(16, (3,3), strides=2, padding="same")', (8, 8, 16), 1312),
        # odd input: ceil(15/2) = 8; a 1x1 stride-2 projection also gives (15-1)//2 + 1 = 8;
        # 1168 + 144 = 1312 as above
        ("(15, 15, 8)", 'Conv2D(16, (3,3), strides=2, padding="same")', (8, 8, 16), 1312),
        # flat input, Dense projection: block 4*8 + 8 = 40; shortcut 4*8 + 8 = 40
        ("(4)", "Dense(8)", (8,), 80),
    ],
)
def test_residual_projected_shortcut(
    input_shape: str, block: str, shape: Shape, params: int
) -> None:
    rep = report(input_shape, f"Residual {{ {block} }}")
    (res,) = rep.layers
    assert (res.output_shape, res.params) == (shape, params)


MULTI = "{ a: (8, 8, 3), b: (8, 8, 5) }"


def test_concatenate_on_the_last_axis() -> None:
    rep = report(
        MULTI, 'a: { Conv2D(4, (3,3), padding="same") }', "b: { Conv2D(6, (1,1)) }", "Concatenate()"
    )
    assert [(lay.name, lay.output_shape, lay.params) for lay in rep.layers] == [
        ("a", (8, 8, 4), 112),  # 3*3*3*4 + 4
        ("b", (8, 8, 6), 36),  # 1*1*5*6 + 6
        ("concatenate_1", (8, 8, 10), 0),  # 4 + 6 channels
    ]
    assert rep.total_params == 148  # 112 + 36


def test_concatenate_on_another_axis() -> None:
    # axis counts the batch dimension, as in Keras: axis=1 is the steps axis.
    rep = report("{ a: (4, 6), b: (6, 3) }", "a: { Dense(8) }", "b: { Dense(8) }", "Concatenate(1)")
    assert [(lay.output_shape, lay.params) for lay in rep.layers] == [
        ((4, 8), 56),  # 6*8 + 8
        ((6, 8), 32),  # 3*8 + 8
        ((10, 8), 0),  # 4 + 6 steps
    ]


@pytest.mark.parametrize("merge", ["Add", "Multiply", "Subtract"])
def test_elementwise_merges(merge: str) -> None:
    rep = report("{ a: (16), b: (8) }", "a: { Dense(4) }", "b: { Dense(4) }", f"{merge}()")
    assert [(lay.output_shape, lay.params) for lay in rep.layers] == [
        ((4,), 68),  # 16*4 + 4
        ((4,), 36),  # 8*4 + 4
        ((4,), 0),
    ]
    assert rep.total_params == 104  # 68 + 36


# ---------------------------------------------------------------------- errors
def test_dense_and_output_act_on_the_last_axis_of_any_rank() -> None:
    # as Keras' Dense and torch's Linear: each pixel's channels map to the units
    rep = report("(28, 28, 1)", "Dense(10)", "Conv2D(4, (3,3))", 'Output(3, "softmax")')
    assert [(la.output_shape, la.params) for la in rep.layers] == [
        ((28, 28, 10), 20),  # 1*10 + 10
        ((26, 26, 4), 364),  # 3*3*10*4 + 4
        ((26, 26, 3), 15),  # 4*3 + 3
    ]
    volume = report("(4, 5, 6, 7)", "Dense(2, use_bias=False)")
    assert (volume.layers[0].output_shape, volume.layers[0].params) == ((4, 5, 6, 2), 14)


@pytest.mark.parametrize(
    ("input_shape", "layer", "column"),
    [
        ("(3, 3, 1)", "Conv2D(8, (5,5))", COLUMN + len("Conv2D(8, ")),
        # dilation 3: span 3*(3-1) + 1 = 7 > 6
        ("(6, 2)", "Conv1D(4, 3, dilation_rate=3)", COLUMN + len("Conv1D(4, ")),
        ("(3, 2)", "MaxPooling1D(4)", COLUMN + len("MaxPooling1D(")),
    ],
)
def test_a_window_larger_than_its_input(input_shape: str, layer: str, column: int) -> None:
    d = shape_error(input_shape, layer)
    assert "larger than its input" in d.message, d.message
    assert (d.line, d.column) == (FIRST_LINE, column)


def test_group_normalization_needs_divisible_channels() -> None:
    d = shape_error("(8, 8, 16)", "GroupNormalization(5)")
    assert "16 channels cannot be split into 5 groups" in d.message, d.message
    assert (d.line, d.column) == (FIRST_LINE, COLUMN + len("GroupNormalization("))


@pytest.mark.parametrize("merge", ["Add()", "Concatenate()"])
def test_a_merge_without_branches(merge: str) -> None:
    d = shape_error("(8)", "Dense(4)", merge)
    assert "merges branches" in d.message, d.message
    assert (d.line, d.column) == (FIRST_LINE + 1, COLUMN)


def test_an_elementwise_merge_of_different_shapes() -> None:
    d = shape_error("{ a: (16), b: (8) }", "a: { Dense(4) }", "b: { Dense(5) }", "Add()")
    assert "Add needs branches of one shape" in d.message, d.message


def test_transformer_features_must_split_across_heads() -> None:
    d = shape_error("(10, 16)", "TransformerEncoder(3, 32)")
    assert "16 features cannot be split across 3 heads" in d.message, d.message
    assert (d.line, d.column) == (FIRST_LINE, COLUMN + len("TransformerEncoder("))


def test_embedding_on_a_rank_2_input() -> None:
    d = shape_error("(10, 4)", "Embedding(100, 8)")
    assert "Embedding expects a sequence of token ids" in d.message, d.message
    assert (d.line, d.column) == (FIRST_LINE, COLUMN)


def test_lstm_on_a_rank_1_input() -> None:
    d = shape_error("(8)", "LSTM(4)")
    assert "LSTM expects (steps, features) input, got (8,)" in d.message, d.message
    assert (d.line, d.column) == (FIRST_LINE, COLUMN)


def test_reshape_must_keep_the_number_of_values() -> None:
    d = shape_error("(24)", "Reshape((5, 5))")
    assert "needs 25 values" in d.message and "has 24" in d.message, d.message


def test_quantum_layer_needs_one_feature_per_qubit() -> None:
    d = shape_error("(5)", "QuantumLayer(4)")
    assert "expects (4,) input, got (5,)" in d.message, d.message
