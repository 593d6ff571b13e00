"""Generated gRPC stubs for protos/gasgd_tf/proto/*.proto; regenerate, never edit."""
