"""D-PoSE engine in plain Python (never imports bpy): checkpoint, network, body model, frames,
people, motion files and the `dpose` command. torch is optional; ONNX Runtime runs the network."""
