// The FFI declarations are in include/FerryFFIC.h; this file only makes SwiftPM build the target.
