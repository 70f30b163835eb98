"""Label file formats (YOLO txt, COCO JSON, Label Studio JSON) as pure conversions to and from Detections."""
