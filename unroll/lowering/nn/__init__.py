"""Networks from schemes: `modules` builds the torch modules (a `Block` per step, a `Network`
owning the history) from the step IR of a scheme's layer form (`unroll.ir.layer_form`)."""
