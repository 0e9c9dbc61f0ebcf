"""Training: the shared loop (:mod:`.loop`), patch sampling and augmentation (:mod:`.data`), and one
module per task that says what a batch and a validation are (:mod:`.demosaic`)."""
