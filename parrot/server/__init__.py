"""The shared server bootstrap every model service (and later the coordinator) runs on."""
