"""Machine learning: point-in-time features, churn, segmentation, CLV, MLflow tracking."""
