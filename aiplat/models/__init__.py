"""Model folders the platform trains from and produces: preparation, manifests, a tiny test model."""
