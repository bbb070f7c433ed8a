"""convert-caffe: the SKNet Caffe release (caffemodel + prototxt) -> timm safetensors, proven against OpenCV."""
