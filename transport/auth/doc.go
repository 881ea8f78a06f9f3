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
// Being from the deployment's CA is not enough: a certificate says what its holder
// may do (Identity: the standby role, or the primary role with the services it may
// ship), and both ends check the other's role and a revocation list at every
// handshake. The CA key stays on one host: InitCA makes it, Request makes a host's key
// and certificate request on that host, Issue signs a request with the roles and
// services the CA's operator chose (so a deployment needs no openssl recipe); Keygen
// does all three in one directory, for tests and trials. LoadConfig turns a
// credentials directory into tls.Configs. The TLS itself is crypto/tls; this package
// only fixes its settings so no caller has to get them right.
package auth
