"""Training: WebDataset loader over curated shards, flow-matching trainer, checkpoints.

    training.config      TrainConfig (the YAML's `train:` section)
    training.data        shard discovery, decoding, aspect buckets, latent caching
    training.trainer     Trainer(cfg).fit(), train_step
    training.checkpoint  save_checkpoint, load_for_inference, latest_checkpoint
    training.commands    `reelsift train` / `reelsift cache-latents`
"""
