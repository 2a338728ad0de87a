"""The model I/O contract: names, positions and the one-buffer rule."""

from __future__ import annotations

import numpy as np

from mxport.contract import io


def test_names():
    assert io.past_names(3) == ("past_key_values.3.key", "past_key_values.3.value")
    assert io.present_names("%d") == ("present.%d.key", "present.%d.value")  # genai's patterns
    assert io.present_to_past("present.2.value") == "past_key_values.2.value"
    assert io.past_to_present("past_key_values.2.key") == "present.2.key"
    assert io.cache_layer("past_key_values.11.value") == (11, "value") and io.cache_layer("present.0.key") == (0, "key")
    assert io.cache_layer("past_key_values.x.key") is None and io.cache_layer(io.LOGITS) is None
    assert io.hidden_layer(io.hidden_name(5)) == 5 and io.hidden_layer("step1/hidden_states.2") == 2
    assert io.hidden_layer("hidden_states.2x") is None
    assert io.residual_name(4) == "layers.4/residual"


def test_position_ids_skip_left_pads():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(io.position_ids(mask, 5), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(io.position_ids(mask, 1), [[2], [4]])
    assert io.position_ids(mask, 2).dtype == np.int64


def test_shared_buffer_layers():
    gqa = ("com.microsoft", "GroupQueryAttention")
    nodes = [
        (*gqa, ["q", "k", "v", "past_key_values.0.key", "past_key_values.0.value"],
         ["o", "present.0.key", "present.0.value"]),
        (*gqa, ["q", "k", "v", "past_key_values.1.key", "past_key_values.1.value"],
         ["o1", "present.1.key", "present.1.value"]),
        ("", "Identity", ["present.1.value"], ["copy"]),  # something else reads layer 1's value present
    ]
    pasts = [n for i in range(2) for n in io.past_names(i)]
    assert io.shared_buffer_layers(nodes, pasts, [io.past_to_present(n) for n in pasts]) == [True, True, True, False]
    mxport_gqa = [("ai.mxport", "GroupQueryAttention", *node[2:]) for node in nodes[:1]]  # the same contract
    assert io.shared_buffer_layers(mxport_gqa, pasts[:2], ["present.0.key", "present.0.value"]) == [True, True]
    attention = [("ai.mxport", "Attention", *node[2:]) for node in nodes[:1]]
    assert io.shared_buffer_layers(attention, pasts[:2], ["present.0.key", "present.0.value"]) == [False, False]
