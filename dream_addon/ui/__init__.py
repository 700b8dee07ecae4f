from . import panels

classes = panels.classes
