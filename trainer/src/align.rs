//! Stage 1 alignment: visual/text embedding alignment (L_align).
//!
//! Not implemented yet (issue "Trainer I").
