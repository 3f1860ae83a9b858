"""One command for a device window: the GPU path's speed and correctness, as JSON and a table.

On a bare GPU machine (torch, torchvision, transformers, onnxruntime and the rest it ships;
no registry), with what ``bash benchmarks/gpu_carry.sh gpu-carry`` put in ``gpu-carry/`` here
(wheels, photos, redis-server's Debian packages), the device tool's one call is::

    run(command="pip install -q --no-index --no-deps --target /tmp/site gpu-carry/wheels/*.whl"
                " && PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu --json $OUT/gpu.json",
        carry=["gpu-carry"], timeout_s=540)

It ends in under 8 minutes on an H100 and measures, with a full-size ViT-B/16 checkpoint built
there with random weights (speed does not depend on the weights; agreement is measured between
two paths of the same weights):

- ``tower``: the fp16 image tower alone, images/s at the auto batch, uint8 input on the device;
- ``decode``: nvJPEG decode + resize alone (images/s), and the share sent to Pillow;
- ``agreement``: the GPU path (nvJPEG, fp16) against the CPU path (Pillow, float32) on the same
  photos: mean and minimum cosine of the embeddings, top-1 label agreement;
- ``end_to_end``: a folder -> producer enqueue -> broker -> worker with K = 1, 2, 3 model
  processes -> results database: images/s, CPU-ms per image of each process, GPU memory of each;
- ``corruption``: pytorch/vision PR 9606's pattern, 200 iterations through this decoder (and
  through torchvision's decode_jpeg without the barrier, for comparison);
- ``ran``: GPU, driver, torch/torchvision versions, backend, precision, batch, broker, database.

Images: >= 20,000 distinct 1,200 px JPEGs derived there from the carried photos (crops, shifts,
re-encodes), so dedupe cannot flatter a figure. ``--device cpu --images 64`` runs the same code
on a CPU with the tiny model (a test in ``make test`` does, so this cannot rot between windows).
"""
