"""What every launch backend shares: the backend-neutral federation spec
(:mod:`adapters.federation.spec`) and the Flower command lines and config built from it
(:mod:`adapters.federation.flower`). Backends (:mod:`adapters.backends`) depend on this
package, never the reverse."""
