"""The paper's model on one device. It knows nothing of parallelism: `dist_s2s.parallel` wraps it."""
