"""What every loop here shares, and nothing of the VAE-GAN.

Both trainers (``vaegan_jax.train``, ``vaegan_jax.classifier.train``), the
sampler and the evaluator build on these; nothing here imports anything above
this package (``tests/layout_test.py`` checks it). ``cli`` is the binaries'
alone: it defines a flag at import, so the library never imports it.

  errors.py         ``UserError``: the one base type of one-line, fixable errors.
  checkpoint.py     checksummed Orbax checkpoints of a whole state with its config;
                    fallback past corrupt ones; which step 'best' or 'latest' means.
  digest.py         the checksum: sha256 of a pytree, whatever its container types.
  best_checkpoint.py  the best checkpoint's record (``best_checkpoint.json``).
  io_errors.py      I/O failures as one line (errno, first line), and Orbax's noise off the console.
  workdir_lock.py   one trainer per workdir.
  loop.py           stop requests (SIGTERM/SIGINT, multi-host agreement), steps in flight, progress.
  parallel.py       pmap placement: replicate, shard, blocks of steps, prefetch to device.
  metric_writer.py  console, TensorBoard, metrics.jsonl and PNG grids.
  image_grid.py     image batches to one uint8 grid and a PNG, written atomically.
  cli.py            the binaries' entry point: flags with one-line errors, a quiet
                    console, ``UserError`` caught in one place.

Importing any of them changes no global state: log filters and hooks are
installed by ``cli.run``.
"""
