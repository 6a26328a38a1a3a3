package netlab

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strconv"
)

// populate creates the FTP root: /pub/big.bin, /pub/small.txt, /list/* and
// the upload directory owned by nobody. Everything else is root's, 0755/0644.
func (s *Server) populate() error {
	for _, d := range []string{"pub", "list", "upload"} {
		if err := os.MkdirAll(filepath.Join(s.Root, d), 0o755); err != nil {
			return fmt.Errorf("creating directory: %w", err)
		}
	}
	if err := os.Chmod(s.Root, 0o755); err != nil {
		return fmt.Errorf("chmod root: %w", err)
	}
	if err := os.Chown(filepath.Join(s.Root, "upload"), nobody, nobody); err != nil {
		return fmt.Errorf("chown upload directory: %w", err)
	}
	var err error
	if s.Big, err = writeFile(s.Root, "/pub/big.bin", BigSize, 1); err != nil {
		return err
	}
	small := "ftpalg test file\nsecond line\n"
	if err := os.WriteFile(s.LocalPath("/pub/small.txt"), []byte(small), 0o644); err != nil {
		return fmt.Errorf("writing small file: %w", err)
	}
	sum := sha256.Sum256([]byte(small))
	s.Small = File{Path: "/pub/small.txt", Size: int64(len(small)), SHA256: hex.EncodeToString(sum[:])}
	for i, name := range s.ListNames {
		if _, err := writeFile(s.Root, path.Join(s.ListDir, name), int64(100*(i+1)), uint64(10+i)); err != nil {
			return err
		}
	}
	return nil
}

// writeFile writes size pseudo-random bytes (from seed) to root+p.
func writeFile(root, p string, size int64, seed uint64) (File, error) {
	local := filepath.Join(root, filepath.FromSlash(p))
	sum, err := WriteRandomFile(local, size, seed)
	if err != nil {
		return File{}, err
	}
	return File{Path: p, Size: size, SHA256: sum}, nil
}

// WriteRandomFile writes size deterministic pseudo-random bytes made from
// seed to name (mode 0644) and returns their hex SHA-256.
func WriteRandomFile(name string, size int64, seed uint64) (string, error) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return "", fmt.Errorf("creating %s: %w", name, err)
	}
	var key [32]byte
	copy(key[:], strconv.FormatUint(seed, 10))
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<16)
	if _, err := io.CopyN(w, rand.NewChaCha8(key), size); err != nil {
		f.Close()
		return "", fmt.Errorf("writing %s: %w", name, err)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return "", fmt.Errorf("writing %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("closing %s: %w", name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FileSHA256 returns the size and hex SHA-256 of a file.
func FileSHA256(name string) (int64, string, error) {
	f, err := os.Open(name)
	if err != nil {
		return 0, "", fmt.Errorf("opening %s: %w", name, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", fmt.Errorf("reading %s: %w", name, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}
