package memkv

import (
	"encoding/gob"
	"io"
)

func gobEncode(w io.Writer, v any) error { return gob.NewEncoder(w).Encode(v) }
