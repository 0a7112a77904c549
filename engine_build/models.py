"""Keras architectures selectable by name, and their cost (parameters, FLOPs)."""

from daemon.preprocess import INPUT_SIZE

ARCHITECTURES = ("digitnet", "seed001", "mlp")
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def build(name, seed=0, classes=10):
    """Return an uncompiled Keras model; input [N,28,28,1] float32, output softmax [N,classes]
    (10 digits, or 11 with the "not a digit" class)."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name=INPUT_NAME)
    if name == "digitnet":
        x = inputs
        for filters, count in ((24, 2), (48, 2)):
            for _ in range(count):
                x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
                x = layers.BatchNormalization()(x)
                x = layers.ReLU()(x)
            x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(96, 3, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Flatten()(x)
        x = layers.Dropout(0.3)(x)
        x = layers.Dense(128, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Dropout(0.3)(x)
    elif name == "seed001":
        # Conv64-pool-Conv32-pool-Conv32-pool-Dense64-Dense32-Dense10, as the seed project had it.
        x = layers.Conv2D(64, 3, padding="same", activation="relu")(inputs)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(64, activation="relu")(x)
        x = layers.Dense(32, activation="relu")(x)
    elif name == "mlp":
        x = layers.Flatten()(inputs)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dense(128, activation="relu")(x)
    else:
        raise ValueError("unknown architecture %r; choose one of %s" % (name, ", ".join(ARCHITECTURES)))
    outputs = layers.Dense(classes, activation="softmax", name=OUTPUT_NAME)(x)
    return tf.keras.Model(inputs, outputs, name=name)


def with_classes(model, classes):
    """``model`` (trained) with an output layer of ``classes`` units: the classes it had keep
    their weights, new ones start from small random weights (fine-tuning a model into one
    that also knows "not a digit" or "digit in transition")."""
    import numpy as np
    import tensorflow as tf
    from tensorflow.keras import layers

    head = model.get_layer(OUTPUT_NAME)
    old_kernel, old_bias = head.get_weights()
    if old_kernel.shape[1] == classes:
        return model
    if old_kernel.shape[1] > classes:
        raise ValueError(
            "cannot drop classes: the model has %d, asked for %d" % (old_kernel.shape[1], classes)
        )
    outputs = layers.Dense(classes, activation="softmax", name=OUTPUT_NAME)(head.input)
    grown = tf.keras.Model(model.input, outputs, name=model.name)
    kernel, bias = grown.get_layer(OUTPUT_NAME).get_weights()
    kernel = kernel * 0.1
    kernel[:, : old_kernel.shape[1]] = old_kernel
    bias[: old_bias.shape[0]] = old_bias
    bias[old_bias.shape[0] :] = np.min(old_bias)
    grown.get_layer(OUTPUT_NAME).set_weights([kernel, bias])
    return grown


def flops_per_image(model):
    """Multiply-accumulates x 2 of the convolution and dense layers (inference, batch 1)."""
    from tensorflow.keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            out_h, out_w, out_c = layer.output.shape[1:]
            k_h, k_w = layer.kernel_size
            in_c = layer.input.shape[-1]
            total += 2 * out_h * out_w * out_c * k_h * k_w * in_c
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)
