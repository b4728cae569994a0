// Package packaging holds the nfpm configuration, maintainer scripts and
// default config of the selfannounce .deb and .rpm, and the tests that check
// the built packages. It has no Go API; packaging.mk drives the build.
package packaging
