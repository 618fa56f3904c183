"""The jobs: every command that writes a run, one shape, ``*_to_run(spec, out) -> Run``.

A job takes a small frozen spec (what the user named: model, images, methods, parameters) and
the run directory; it checks everything it can before the run is created, loads the model and
the data (:mod:`.model`), does the work through the library's rooms, and records the run's
provenance (:mod:`.common`). The CLI only parses arguments into a spec, calls the job, and
prints; Python calls the same jobs with the same result.

======================  =====================================  ======================
job                     spec                                   command
======================  =====================================  ======================
``explain_to_run``      :class:`.explain.ExplainSpec`          ``xailab explain``
``compare_to_run``      :class:`.compare.CompareSpec`          ``xailab compare``
``crosscheck_to_run``   :class:`.crosscheck.CrosscheckSpec`    ``xailab crosscheck``
``train_to_run``        :class:`.train.TrainSpec`              ``xailab train``
``evaluate_to_run``     :class:`.evaluate.EvaluateSpec`        ``xailab evaluate``
``adversarial_to_run``  :class:`.audit.AdversarialSpec`        ``xailab audit adversarial``
``poison_to_run``       :class:`.audit.PoisonSpec`             ``xailab audit poison``
``backdoor_to_run``     :class:`.audit.BackdoorSpec`           ``xailab audit backdoor``
``ice_to_run``          :class:`.concepts.IceSpec`             ``xailab concepts ice``
``concept_maps_to_run`` :class:`.concepts.ConceptMapsSpec`     ``xailab concepts explain``
``tcav_to_run``         :class:`.concepts.TcavSpec`            ``xailab concepts tcav``
``dissect_to_run``      :class:`.dissect.DissectSpec`          ``xailab dissect``
======================  =====================================  ======================

Import a job from its module (``from xailab.jobs.explain import ExplainSpec, explain_to_run``);
this package imports nothing heavy by itself.
"""
