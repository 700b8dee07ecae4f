from . import mosaic, panels

classes = panels.classes + mosaic.classes
