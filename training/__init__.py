"""Training methods (SFT, asker SFT, CaPO) with DeepSpeed: issue 6.

A checkpoint written here is a Hugging Face folder the model services load by path
(`parrot serve responder --model <folder>`); an asker checkpoint marks itself with
``parrot_model.json`` = ``{"role": "asker"}`` and is trained on the role-swapped format of
``parrot.asking.prompting.to_role_swapped``.
"""
