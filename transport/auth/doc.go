// Package auth secures the connection between an ftrun primary and its standby.
//
// That connection carries the protected program's entire memory every epoch (keys,
// sessions, customer data), and whatever the standby accepts it will one day run. So
// both ends must prove who they are and the bytes must be unreadable and untouchable
// in between: the channel is TLS 1.3 only, with mutual certificate authentication
// against a private CA that exists for nothing but one ftrun deployment. Public CAs
// are useless here (any certificate they issue would be accepted) and there is no
// plaintext mode to fall back to, so a misconfiguration fails closed.
//
// Keygen makes the CA and node certificates (so a deployment needs no openssl
// recipe) and LoadConfig turns a credentials directory into tls.Configs. The TLS
// itself is crypto/tls; this package only fixes its settings so no caller has to get
// them right.
package auth
