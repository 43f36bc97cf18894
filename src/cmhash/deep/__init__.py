"""Deep cross-modal hashing methods (optional: needs PyTorch, ``pip install 'cmhash[deep]'``).

* :mod:`cmhash.deep.backbones` -- MLP, CNN-F, AlexNet, torchvision's AlexNet / VGG-16 /
  ResNet-50, the papers' text networks.
* :mod:`cmhash.deep.weights` -- pretrained weights from user files only (MatConvNet .mat in
  the SimpleNN and DagNN layouts, torchvision state_dicts, Caffe's grouped AlexNet, plain
  state_dicts) and the input normalisation they need (:mod:`cmhash.deep.normalization`,
  NumPy only). Nothing is downloaded.
* :mod:`cmhash.deep._torch_base` -- ``TorchHasher`` base class, devices, seeding.
* :mod:`cmhash.deep.ta_adcmh` -- TA-ADCMH (task-adaptive asymmetric deep cross-modal hashing).
* :mod:`cmhash.deep.sdch` -- SDCH.
* :mod:`cmhash.deep.dcmh` -- DCMH (Jiang & Li, CVPR 2017), the deep baseline.

Importing this package does not import torch; its submodules do.
"""
