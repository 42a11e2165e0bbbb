"""Training: one stage runner (:mod:`.stage`, :mod:`.loop`, :mod:`.step`) for the encoder
(:mod:`.encoder`) and the discriminator (:mod:`.discriminator`), with their optimisers
(:mod:`.optim`), logs (:mod:`.logs`) and monitors (:mod:`.monitors`). Never imported by evaluation."""
