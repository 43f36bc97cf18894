"""Deep cross-modal hashing methods (optional: needs PyTorch, ``pip install 'cmhash[deep]'``).

* :mod:`cmhash.deep.backbones` -- MLP, CNN-F, AlexNet, the papers' text networks; loading of
  user-supplied weights (PyTorch state_dict, MatConvNet imagenet-vgg-f.mat). Nothing is
  downloaded.
* :mod:`cmhash.deep._torch_base` -- ``TorchHasher`` base class, devices, seeding.
* :mod:`cmhash.deep.ta_adcmh` -- TA-ADCMH (task-adaptive asymmetric deep cross-modal hashing).
* :mod:`cmhash.deep.sdch` -- SDCH.
* :mod:`cmhash.deep.dcmh` -- DCMH (Jiang & Li, CVPR 2017), the deep baseline.

Importing this package does not import torch; its submodules do.
"""
