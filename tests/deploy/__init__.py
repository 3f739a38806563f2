"""Checks of what is deployed: the Helm chart, the image files, the Kubernetes manifests of training."""
