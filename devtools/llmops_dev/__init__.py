"""Developer tooling: a real local Kubernetes control plane built from the Go module proxy."""
