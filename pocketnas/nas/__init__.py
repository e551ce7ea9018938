"""Neural architecture search pieces: the one operation registry, the one genotype type, search spaces."""
