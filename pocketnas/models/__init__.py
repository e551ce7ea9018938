"""Final (discrete) networks: PocketNets built from genotypes, and the teachers (iResNet, MobileFaceNet)."""
