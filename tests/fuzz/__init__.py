"""Hostile checkpoints: builders (``hostile``), seeded fuzz generators at three levels (``cases``),
the memory-capped child that runs them (``worker``, driven through ``harness``) and the offline
runner (``run_offline``). docs/hostile-input.md describes what is checked and the figures."""
