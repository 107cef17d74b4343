package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// defaultDevSecretFile is where `moodio-rt serve --dev` keeps its secret:
// Node's os.tmpdir() (TMPDIR, else /tmp), as Go's os.TempDir() reads it.
func defaultDevSecretFile() string {
	return filepath.Join(strings.TrimRight(os.TempDir(), "/"), "moodio-rt-dev-secret")
}

// readDevSecret reads a dev server's secret file as src/auth/dev-secret.ts
// does, and trusts it only as that does: a regular file (not a link) of
// this user that no one else can read or write. ok is false when there is
// no file.
func readDevSecret(file string) (secret string, ok bool, err error) {
	fd, err := syscall.Open(file, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err == syscall.ENOENT {
		return "", false, nil
	}
	if err == syscall.ELOOP {
		return "", false, optionError("--dev-secret-file", "%s is a symbolic link; remove it, or pass a path of your own", file)
	}
	if err != nil {
		return "", false, optionError("--dev-secret-file", "cannot open %s: %v", file, err)
	}
	f := os.NewFile(uintptr(fd), file)
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return "", false, optionError("--dev-secret-file", "cannot stat %s: %v", file, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return "", false, optionError("--dev-secret-file", "%s is not a regular file; remove it, or pass a path of your own", file)
	}
	if uid := uint32(os.Getuid()); st.Uid != uid {
		return "", false, optionError("--dev-secret-file", "%s is owned by uid %d, not by this user (uid %d), so someone else may know the secret", file, st.Uid, uid)
	}
	if st.Mode&0o077 != 0 {
		return "", false, optionError("--dev-secret-file", "%s has mode 0%o, so others may read or replace the secret", file, st.Mode&0o777)
	}
	buf := make([]byte, 4096)
	n, _ := f.Read(buf)
	secret = strings.TrimSpace(string(buf[:n]))
	if secret == "" {
		return "", false, optionError("--dev-secret-file", "%s is empty", file)
	}
	return secret, true, nil
}

// tokenClaims are the claims `moodio-rt loadtest` signs (src/loadtest/runner.ts tokenSource).
type tokenClaims struct {
	UserID     string `json:"userId"`
	FirstName  string `json:"firstName"`
	Email      string `json:"email"`
	Permission string `json:"permission"`
	Iat        int64  `json:"iat"`
	Exp        int64  `json:"exp"`
}

var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// signToken is jsonwebtoken's sign(claims, secret, { algorithm: 'HS256', expiresIn }).
func signToken(claims tokenClaims, secret string) string {
	body, _ := json.Marshal(claims)
	signing := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(body)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signing))
	return signing + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func randomUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// tokenSource returns one token per call: from --token-file round-robin, or
// minted as the Node generator mints them (a fresh user per session, editor).
func tokenSource(o *options, ttlSeconds int64) (func() string, error) {
	if o.tokenFile != "" {
		data, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, optionError("--token-file", "cannot read %s: %v", o.tokenFile, err)
		}
		var tokens []string
		for _, line := range strings.Split(string(data), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				tokens = append(tokens, line)
			}
		}
		if len(tokens) == 0 {
			return nil, optionError("--token-file", "%s holds no token", o.tokenFile)
		}
		next := 0
		return func() string { t := tokens[next%len(tokens)]; next++; return t }, nil
	}
	n := 0
	now := time.Now().Unix()
	mint := func() string {
		n++
		return signToken(tokenClaims{
			UserID:     randomUUID(),
			FirstName:  fmt.Sprintf("Load%d", n),
			Email:      fmt.Sprintf("load%d@loadtest.invalid", n),
			Permission: "editor",
			Iat:        now,
			Exp:        now + ttlSeconds,
		}, o.secret)
	}
	return mint, nil
}
